from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self) -> None:
        # receivers audits sign-ins, access_audit every change of who may do what;
        # schema registers the bearer scheme with the schema.
        from portal import access_audit, receivers, schema  # noqa: F401
