"""The OpenAPI description of the incoming hooks: their signature scheme (loaded in
``IntegrationsConfig.ready``), the headers they read and the answer to a repeated
delivery."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers


class HookSignatureScheme(OpenApiAuthenticationExtension):
    target_class = "integrations.hooks.HookSignatureAuthentication"
    name = "hookSignature"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "X-Portal-Signature",
                "description": "`sha256=` and the hex HMAC-SHA256 of the raw body, keyed "
                               "with the hook's secret (PORTAL_HOOK_SECRET_CI, _PUSH, "
                               "_ALERTMANAGER)."}


class HookDuplicateSerializer(serializers.Serializer):
    """A hook delivery received before: acknowledged, and nothing applied again."""

    duplicate = serializers.BooleanField(help_text="Always true.")
    detail = serializers.CharField()


# What the hooks read besides the body (docs/api.md, "Hooks").
HOOK_HEADERS = [
    OpenApiParameter(
        name="webhook-id", type=OpenApiTypes.STR, location=OpenApiParameter.HEADER,
        description="Standard Webhooks: the delivery id. A delivery id seen before answers "
                    "200 `{duplicate: true}` and changes nothing. Token callers may send it "
                    "for the same guarantee."),
    OpenApiParameter(
        name="webhook-timestamp", type=OpenApiTypes.STR, location=OpenApiParameter.HEADER,
        description="Standard Webhooks: seconds since the Unix epoch; more than five minutes "
                    "away from the portal's clock is 401 `stale_signature`."),
    OpenApiParameter(
        name="webhook-signature", type=OpenApiTypes.STR, location=OpenApiParameter.HEADER,
        description="Standard Webhooks: `v1,<base64 HMAC-SHA256 of \"<id>.<timestamp>.<raw "
                    "body>\">`, keyed with the hook's secret; several may be sent, "
                    "space-separated (key rotation)."),
    OpenApiParameter(
        name="X-Hub-Signature-256", type=OpenApiTypes.STR, location=OpenApiParameter.HEADER,
        description="GitHub's body signature: `sha256=<hex HMAC-SHA256 of the raw body>`; "
                    "needs X-GitHub-Delivery."),
    OpenApiParameter(
        name="X-GitHub-Delivery", type=OpenApiTypes.STR, location=OpenApiParameter.HEADER,
        description="GitHub's delivery id; with X-Hub-Signature-256, or sent by a token "
                    "caller so a delivery is applied once."),
    OpenApiParameter(
        name="X-Portal-Signature", type=OpenApiTypes.STR, location=OpenApiParameter.HEADER,
        description="The same value as X-Hub-Signature-256, for senders other than GitHub."),
]
