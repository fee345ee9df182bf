from django.apps import AppConfig


class ReleasesConfig(AppConfig):
    name = "releases"
    verbose_name = "Model releases"

    def ready(self):
        # Registers the run-reports admin, the deploy checks, and the run reports' beat task (which
        # nothing queues: beat names it, so every process knows it as the other tasks).
        from . import admin_reports, checks, report_tasks  # noqa: F401
