"""The Security page: a person's second factors and sessions (docs/identity.md)."""

from __future__ import annotations

from allauth.mfa.models import Authenticator
from allauth.usersessions.models import UserSession
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from identity import services
from identity import signin as identity

KIND_LABELS = {
    Authenticator.Type.TOTP: "Authenticator app (TOTP)",
    Authenticator.Type.WEBAUTHN: "Passkey",
    Authenticator.Type.RECOVERY_CODES: "Recovery codes",
}


def _factors(user) -> list[dict]:
    rows = []
    for authenticator in Authenticator.objects.filter(user=user).order_by("created_at"):
        name = ""
        if authenticator.type == Authenticator.Type.WEBAUTHN:
            name = authenticator.wrap().name
        elif authenticator.type == Authenticator.Type.RECOVERY_CODES:
            unused = len(authenticator.wrap().get_unused_codes())
            name = f"{unused} unused"
        rows.append({"authenticator": authenticator, "type": authenticator.type,
                     "kind": KIND_LABELS.get(authenticator.type, authenticator.type),
                     "name": name})
    return rows


@login_required
def security(request):
    factors = _factors(request.user)
    types = {f["type"] for f in factors}
    sessions = sorted(UserSession.objects.purge_and_list(request.user),
                      key=lambda s: s.last_seen_at, reverse=True)
    current = request.session.session_key
    seen = identity.sessions_last_seen([s.session_key for s in sessions])
    for session in sessions:
        session.last_seen_at = max(session.last_seen_at, seen.get(session.session_key,
                                                                   session.last_seen_at))
    return render(request, "account/security.html", {
        "factors": factors,
        "has_totp": Authenticator.Type.TOTP in types,
        "has_recovery_codes": Authenticator.Type.RECOVERY_CODES in types,
        "has_second_factor": bool(types & {Authenticator.Type.TOTP,
                                           Authenticator.Type.WEBAUTHN}),
        "sessions": [{"session": s, "current": s.session_key == current} for s in sessions],
        "others": sum(1 for s in sessions if s.session_key != current),
        "sso_accounts": list(request.user.socialaccount_set.all()),
    })


@login_required
@require_POST
def sessions_end_others(request):
    ended = services.sessions_end_others(user=request.user,
                                         current_session_key=request.session.session_key or "")
    messages.success(request, f"Signed out of {ended} other session{'s' if ended != 1 else ''}."
                     if ended else "There were no other sessions to sign out of.")
    return redirect("security")


def not_offered(request, *args, **kwargs):
    """allauth pages the portal does not offer (password reset by e-mail)."""
    raise Http404
