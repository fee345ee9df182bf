from django.apps import AppConfig


class ReleasesConfig(AppConfig):
    name = "releases"
    verbose_name = "Model releases"

    def ready(self):
        from . import checks  # noqa: F401 (registers the deploy checks)
