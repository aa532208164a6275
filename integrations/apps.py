from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Integrations"

    def ready(self) -> None:
        # schema registers the hooks' signature scheme with the OpenAPI description; an
        # Alertmanager answer leaves out what it has nothing to say about.
        from core.schema import register_sparse_answer
        from integrations import schema  # noqa: F401

        register_sparse_answer("AlertOutcome")
