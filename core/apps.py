from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        # receivers audits sign-ins, access_audit every change of who may do what;
        # schema registers the bearer scheme with the schema.
        from core import access_audit, receivers, schema  # noqa: F401
