import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_config.settings")

application = get_wsgi_application()

# Signing credentials are fetched as the worker starts and renewed in the background from
# then on, so no request waits on a credential provider.
from releases import signing  # noqa: E402 (needs the app registry that get_wsgi_application set up)

signing.prepare()
