"""The OpenAPI description of the API tokens' bearer scheme (loaded in
``IdentityConfig.ready``)."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "identity.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "An API token from the Tokens page or "
                               "`manage.py issue_token USER --scopes read,request`."}
