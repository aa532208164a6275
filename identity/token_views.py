"""The API tokens page: list, issue (the token is shown once), revoke."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from core.errors import DomainError, StepUpRequired
from identity import accounts, stepup_views
from identity.models import ApiToken, TokenScope
from identity.services import api_token_issue, api_token_revoke


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Say what uses it, e.g. the CI pipeline.")
    scopes = forms.MultipleChoiceField(
        choices=TokenScope.choices, widget=forms.CheckboxSelectMultiple,
        initial=[TokenScope.READ],
        help_text="A token can do only what its scopes allow, even if you may do more.")
    days = forms.IntegerField(label="Expires after (days)", min_value=1, max_value=3650,
                              initial=90)
    user = forms.ModelChoiceField(
        queryset=get_user_model().objects.none(), required=False,
        label="For a service account",
        help_text="Leave empty for a token of your own. Administrators may issue tokens "
                  "for service accounts (CI); never for another person.")

    def __init__(self, *args, actor, **kwargs):
        super().__init__(*args, **kwargs)
        if actor.is_superuser:
            # Only service accounts are offered. Any other account posted is passed on
            # to the service, which refuses it and puts the attempt on the record.
            field = self.fields["user"]
            field.queryset = get_user_model().objects.filter(is_active=True)
            field.widget.choices = [("", "(a token of my own)")] + [
                (u.pk, u.get_username()) for u in accounts.service_accounts()]
        else:
            del self.fields["user"]


def _tokens_for(user):
    tokens = ApiToken.objects.select_related("user").order_by("-created_at", "-id")
    return tokens if user.is_superuser else tokens.filter(user=user)


@login_required
def token_list(request):
    issued = None
    if request.method == "POST":
        form = TokenForm(request.POST, actor=request.user)
        if form.is_valid():
            owner = form.cleaned_data.get("user") or request.user
            try:
                token, raw = api_token_issue(
                    actor=request.user, user=owner, name=form.cleaned_data["name"],
                    scopes=form.cleaned_data["scopes"],
                    expires_at=timezone.now() + timedelta(days=form.cleaned_data["days"]))
            except StepUpRequired as exc:
                return stepup_views.answer(request, exc)
            except DomainError as exc:
                for name, errors in (exc.fields or {"name": [exc.detail]}).items():
                    form.add_error(name if name in form.fields else None, errors)
            else:
                # Shown on this answer only; it is never stored or shown again.
                issued = {"token": token, "raw": raw}
                form = TokenForm(actor=request.user)
    else:
        form = TokenForm(actor=request.user)
    return render(request, "tokens/list.html", {
        "form": form, "issued": issued, "tokens": list(_tokens_for(request.user)),
        "now": timezone.now(),
    }, status=400 if request.method == "POST" and not issued else 200)


@login_required
@require_POST
def token_revoke(request, pk: int):
    token = get_object_or_404(_tokens_for(request.user), pk=pk)
    try:
        api_token_revoke(actor=request.user, token=token)
    except DomainError as exc:
        messages.error(request, exc.detail)
    else:
        messages.success(request, f"Token {token.name} revoked; it no longer works.")
    return redirect("token-list")
