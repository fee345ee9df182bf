import os

from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_config.settings")

application = get_wsgi_application()

from releases import checks, signing  # noqa: E402 (needs the app registry that get_wsgi_application set up)

# Production pages need collectstatic's manifest: refuse to start rather than answer every page with a 500.
if problem := checks.static_manifest_problem():
    raise ImproperlyConfigured(problem)
# Signing credentials are fetched as the worker starts and renewed in the background from
# then on, so no request waits on a credential provider.
signing.prepare()
