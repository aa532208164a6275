"""REST API v1 of tokens: the second-factor check a token's owner answers through it."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from core.api import APPROVE, DEPLOY, ApiView
from core.errors import Refused
from core.idempotency import idempotent
from identity import assurance
from identity.models import ApiToken
from identity.services import api_token_step_up


class StepUpInSerializer(serializers.Serializer):
    code = serializers.CharField(
        max_length=64, trim_whitespace=True,
        help_text="The code your authenticator app shows now, or one of your recovery "
                  "codes (each works once).")


class StepUpOutSerializer(serializers.Serializer):
    kind = serializers.CharField(help_text="`totp` or `recovery_codes`.")
    checked_at = serializers.DateTimeField()
    fresh_until = serializers.DateTimeField(
        help_text="Until then this token may make Production decisions (approve, reject, "
                  "deploy, roll back, unlock, retry or mark done a step).")


class StepUp(ApiView):
    """``POST /api/v1/auth/step-up``: check the token owner's second factor.

    A token that may decide (scope ``approve`` or ``deploy``) counts as checked for
    ``PORTAL_STEP_UP_SECONDS`` after its owner answers here; the Production decisions
    it makes in that time record this check in their audit events.
    """

    write_scopes = frozenset({APPROVE, DEPLOY})

    def required_scopes(self, request) -> set[str]:
        # Either scope that decides in Production will do.
        held = set(getattr(request.auth, "scopes", None) or [])
        return {APPROVE} if APPROVE in held or DEPLOY not in held else {DEPLOY}

    @extend_schema(
        request=StepUpInSerializer, responses={200: StepUpOutSerializer},
        summary="Answer a second-factor check with this token (before Production decisions)",
        description="Send a TOTP code or a recovery code of the token's owner. 200: the "
                    "token may make Production decisions until `fresh_until`. Wrong "
                    "or already used code: 403 `wrong_code`; after too many wrong codes: 403 "
                    "`too_many_attempts`; no second factor: 403 `mfa_required`; "
                    "passkeys only (not taken here): 403 `no_code_factor`; a signed-in "
                    "session instead of a token: 403 `token_required`. Every attempt is "
                    "audited. A code works once; an `Idempotency-Key` sent again with "
                    "the same body replays the first answer and checks nothing again.")
    @idempotent
    def post(self, request):
        if not isinstance(request.auth, ApiToken):
            raise Refused("this check is answered with an API token; in the browser the "
                          "portal's pages ask for your second factor", code="token_required")
        data = StepUpInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        token = api_token_step_up(actor=request.user, token=request.auth,
                                  code=data.validated_data["code"])
        checked = assurance.Assurance(kind=token.second_factor, at=token.second_factor_at,
                                      via="token")
        return Response(StepUpOutSerializer({
            "kind": checked.kind, "checked_at": checked.at,
            "fresh_until": checked.fresh_until()}).data)
