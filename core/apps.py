from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        # receivers audits sign-ins, access_audit every change of who may do what;
        # schema registers the bearer scheme with the schema; identity connects
        # allauth's sign-in and second-factor signals to the services;
        # assurance: the session remembers who must hold a second factor.
        from core import access_audit, assurance, identity, receivers, schema  # noqa: F401

        assurance.connect()
