from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self) -> None:
        # receivers audits sign-ins; schema registers the bearer scheme with the schema.
        from portal import receivers, schema  # noqa: F401
