from django.apps import AppConfig


class IdentityConfig(AppConfig):
    name = "identity"
    verbose_name = "Identity"

    def ready(self) -> None:
        # receivers audits sign-ins; schema registers the bearer scheme with the schema;
        # signin connects allauth's sign-in and second-factor signals to the services;
        # assurance: the session remembers who must hold a second factor.
        from core.api import ScopedCredential
        from identity import assurance, receivers, schema, signin  # noqa: F401
        from identity.models import ApiToken

        assurance.connect()
        # A token's scopes limit what it may do (core.api.HasTokenScope).
        ScopedCredential.register(ApiToken)
