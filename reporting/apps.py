from django.apps import AppConfig


class ReportingConfig(AppConfig):
    name = "reporting"
    verbose_name = "Reporting"

    def ready(self) -> None:
        # A signed audit checkpoint after each production deployment (docs/audit.md),
        # and the daily roll-ups of the DORA figures (docs/metrics.md).
        from reporting import receivers  # noqa: F401
