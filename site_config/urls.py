from django.contrib import admin
from django.urls import include, path

from releases.api import api

admin.site.site_header = "Model Releases"
admin.site.site_title = "Model Releases admin"
admin.site.index_title = "Publish and manage model versions"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("", include("releases.urls")),
]

# Styled for browsers, plain text for other clients, JSON under /api/ (releases/views/errors.py).
handler404 = "releases.views.errors.not_found"
handler500 = "releases.views.errors.server_error"
