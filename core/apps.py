from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        # receivers drops the permissions a request has read when grants change;
        # schema holds the API's error answers for the OpenAPI description.
        from core import receivers, schema  # noqa: F401
