from django.urls import path, re_path

from . import views

app_name = "releases"

urlpatterns = [
    path("", views.index, name="index"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics, name="metrics"),
    path("fetch-model.sh", views.fetch_model_script, name="fetch-model"),
    path("models/<str:model>/", views.model_page, name="model"),
    path("models/<str:model>/<str:version>/", views.version_page, name="version"),
    path("models/<str:model>/<str:version>/<path:path>", views.download, name="download"),
    re_path(r"^files/(?P<key>.+)$", views.local_file, name="local-file"),
]
