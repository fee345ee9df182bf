from django.urls import path, re_path

from . import feeds
from .views import downloads, operations, pages

app_name = "releases"

urlpatterns = [
    path("", pages.index, name="index"),
    path("healthz", operations.healthz, name="healthz"),
    path("readyz", operations.readyz, name="readyz"),
    path("metrics", operations.metrics, name="metrics"),
    path("fetch-model.sh", operations.fetch_model_script, name="fetch-model"),
    path("fetch_model.py", operations.fetch_model_python, name="fetch-model-python"),
    path("feeds/releases.atom", feeds.site_feed, name="feed"),
    path("models/<str:model_slug>/", pages.model_page, name="model"),
    path("models/<str:model_slug>/releases.atom", feeds.model_feed, name="model-feed"),
    path("models/<str:model_slug>/<str:version>/", pages.version_page, name="version"),
    path("models/<str:model_slug>/<str:version>/<path:path>", downloads.download, name="download"),
    path("chunks/<str:sha256>", downloads.chunks, name="chunks"),
    re_path(r"^files/(?P<key>.+)$", downloads.local_file, name="local-file"),
]
