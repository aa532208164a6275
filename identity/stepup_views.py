"""Pages of the second-factor step-up (SOP 10.2, identity.assurance).

When a service refuses a person for want of a recent second-factor check, the page
keeps what they sent (path and form fields, under a one-time id, in the session),
sends them to django-allauth's second-factor check, and then posts it again, with a
new CSRF token, to the same page: the service decides again, now with a fresh check.
"""

from __future__ import annotations

import secrets
import time

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode

from core.errors import DomainError, SecondFactorRequired, StepUpRequired
from identity import assurance

STASH = "portal_step_up_stash"


def answer(request, exc: StepUpRequired | SecondFactorRequired) -> HttpResponse:
    """The page's answer to a refusal for want of a second factor: the step-up, or a
    page saying to enrol one."""
    if isinstance(exc, StepUpRequired):
        return ask(request)
    context = {"detail": exc.detail, "enrol_url": assurance.enrol_url()}
    if getattr(request, "htmx", False):
        response = HttpResponse(status=200)
        response["HX-Redirect"] = reverse("second-factor-required")
        return response
    return render(request, "identity/second_factor_required.html", context, status=403)


def page_action(request, action, *, done: str, back: str, refused: str = "") -> HttpResponse:
    """A page's form handler: run ``action``; a refusal for want of a second factor asks
    for it (then the form is posted again), any other refusal is said as an error
    (after ``refused:`` when given), success as ``done``; then back to ``back`` (a URL)."""
    try:
        action()
    except (StepUpRequired, SecondFactorRequired) as exc:
        return answer(request, exc)
    except DomainError as exc:
        messages.error(request, f"{refused}: {exc.detail}" if refused else exc.detail)
    else:
        messages.success(request, done)
    return redirect(back)


def _check_page(user) -> str:
    """allauth's second-factor check for the factor ``user`` has: the code page for an
    authenticator app (it offers a passkey too), else the passkey page."""
    from allauth.mfa.models import Authenticator

    if Authenticator.objects.filter(user_id=user.pk, type=Authenticator.Type.TOTP).exists():
        return "mfa_reauthenticate"
    return "mfa_reauthenticate_webauthn"


def ask(request) -> HttpResponse:
    """Keep the posted form and send the person to the second-factor check."""
    stash = secrets.token_urlsafe(16)
    request.session[STASH] = {
        "id": stash, "path": request.path, "at": time.time(),
        "fields": [[name, value] for name, values in request.POST.lists() for value in values
                   if name != "csrfmiddlewaretoken"],
    }
    url = (reverse(_check_page(request.user)) + "?"
           + urlencode({"next": reverse("step-up-resume", args=[stash])}))
    if getattr(request, "htmx", False):
        response = HttpResponse(status=200)
        response["HX-Redirect"] = url
        return response
    return redirect(url)


@login_required
def resume(request, stash: str):
    """After the check: post what was kept, once, to where it was going."""
    kept = request.session.get(STASH) or {}
    if (kept.get("id") != stash
            or time.time() - float(kept.get("at", 0)) > settings.PORTAL_STEP_UP_SECONDS):
        messages.error(request, "Nothing is waiting to be finished: it was finished "
                                "already, or it waited too long. Do it again.")
        return redirect("home")
    del request.session[STASH]
    return render(request, "identity/step_up_resume.html",
                  {"action": kept["path"], "fields": kept["fields"]})


@login_required
def second_factor_required(request):
    """The refusal page for people who must enrol a second factor first."""
    return render(request, "identity/second_factor_required.html", {
        "detail": "you need a second factor (an authenticator app or a passkey) for "
                  "decisions in Production; enrol one on your Security page, then try again",
        "enrol_url": assurance.enrol_url()}, status=403)
