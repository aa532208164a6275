"""The OpenAPI description: authentication schemes, the error body, and the
error answers every operation can give, so the schema states them exactly."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "core.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "An API token from the Tokens page or "
                               "`manage.py issue_token USER --scopes read,request`."}


class HookSignatureScheme(OpenApiAuthenticationExtension):
    target_class = "integrations.hooks.HookSignatureAuthentication"
    name = "hookSignature"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "X-Portal-Signature",
                "description": "`sha256=` and the hex HMAC-SHA256 of the raw body, keyed "
                               "with the hook's secret (PORTAL_HOOK_SECRET_CI, _PUSH, "
                               "_ALERTMANAGER)."}


class ErrorBlockerSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    """The body of every error answer."""

    code = serializers.CharField(help_text="Stable machine-readable code, e.g. `not_ready`.")
    detail = serializers.CharField(help_text="What went wrong, in plain words.")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), required=False,
        help_text="400 only: the messages for each field at fault.")
    blockers = ErrorBlockerSerializer(many=True, required=False,
                                      help_text="409 `not_ready` only: what stands in the way.")


ERROR_DESCRIPTIONS = {
    "400": "Invalid input: `code` is `invalid` (with `fields`) or `malformed`.",
    "401": "No credentials, or a token that is unknown, expired or revoked.",
    "403": "Refused: missing token scope (`insufficient_scope`), object permission "
           "(`not_permitted`, `not_eligible`), segregation of duties (`self_approval`), "
           "or CSRF (`csrf_failed`).",
    "404": "No such object, or one the caller may not see.",
    "409": "State conflict (`not_ready` with `blockers`, `already_decided`, "
           "`deployment_in_progress`, `release_exists`, `idempotency_in_flight`, ...).",
    "415": "The body is not JSON.",
    "422": "`idempotency_key_reused`: the Idempotency-Key was used with a different request.",
    "429": "Rate limited (`rate_limited`); wait for Retry-After seconds.",
}

IDEMPOTENCY_HEADER = OpenApiParameter(
    name="Idempotency-Key", type=OpenApiTypes.STR, location=OpenApiParameter.HEADER,
    required=False,
    description="Makes a retry safe: the same key with the same body replays the first "
                "answer (with `Idempotent-Replayed: true`); with a different body it is a 422; "
                "while the first is still running it is a 409. Keys are kept 24 hours, per "
                "user. At most 255 characters.",
)


class PortalAutoSchema(AutoSchema):
    def _error_statuses(self) -> list[str]:
        codes = ["400", "401", "403", "404", "429"]
        if self.method == "POST":
            codes += ["409", "415"]
            if self._is_idempotent():
                codes.append("422")
        return codes

    def _is_idempotent(self) -> bool:
        handler = getattr(self.view, self.method.lower(), None)
        return bool(getattr(handler, "idempotent", False))

    def get_override_parameters(self):
        params = list(super().get_override_parameters())
        if self.method == "POST" and self._is_idempotent():
            params.append(IDEMPOTENCY_HEADER)
        return params

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for code in self._error_statuses():
            if code not in responses:
                responses[code] = self._get_response_for_code(ErrorSerializer, code,
                                                              direction=direction)
                responses[code]["description"] = ERROR_DESCRIPTIONS[code]
        return responses
