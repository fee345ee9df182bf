from django.apps import AppConfig


class ReleasesConfig(AppConfig):
    name = "releases"
    verbose_name = "Model releases"

    def ready(self):
        from . import admin_reports, checks  # noqa: F401 (registers the run-reports admin, the deploy checks)
