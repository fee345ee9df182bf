"""The image's HEALTHCHECK: exit 0 when gunicorn answers /healthz with 200 on its own port, else 1.

The port is GUNICORN_BIND's (default 8000), asked on loopback; /healthz answers on any Host
header, so DJANGO_ALLOWED_HOSTS need not list the container's address.
"""

import os
import sys
import urllib.request

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000").split(",")[0]
port = bind.rsplit(":", 1)[-1] if ":" in bind else "8000"
try:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        f"http://127.0.0.1:{port}/healthz", timeout=2
    ) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as error:
    print(f"/healthz on port {port}: {error}", file=sys.stderr)
    sys.exit(1)
