"""Configuration pages: history and editing per application and environment, and
diffs between versions and between environments."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render

from catalog.models import Application, Environment
from catalog.selectors import visible_environment_ids
from configuration import selectors, services
from core.errors import DomainError


class ConfigurationForm(forms.Form):
    document = forms.CharField(widget=forms.Textarea(attrs={"rows": 18, "spellcheck": "false",
                                                            "class": "mono"}),
                               label="Configuration (YAML)", strip=False)
    reason = forms.CharField(max_length=300, label="Why it changes")


def _visible_environment(user, slug: str) -> Environment:
    env = get_object_or_404(Environment, slug=slug)
    ids = visible_environment_ids(user)
    if ids is not None and env.pk not in ids:
        raise_404()
    return env


def raise_404():
    from django.http import Http404

    raise Http404("no such configuration")


@login_required
def configuration_detail(request, application: str, environment: str):
    app = get_object_or_404(Application, slug=application)
    env = _visible_environment(request.user, environment)
    history = list(selectors.versions(app.pk, env.pk)[:50])
    current = history[0] if history else None
    form = ConfigurationForm(request.POST or None, initial={
        "document": current.document if current else ""})
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            version = services.configuration_save(
                actor=request.user, application=app, environment=env,
                document=form.cleaned_data["document"], reason=form.cleaned_data["reason"])
        except DomainError as exc:
            for problem in (exc.fields or {}).get("document", []):
                form.add_error("document", problem)
            for problem in (exc.fields or {}).get("reason", []):
                form.add_error("reason", problem)
            if not exc.fields:
                form.add_error(None, exc.detail)
            status = 403 if exc.status == 403 else 400
        else:
            messages.success(request, f"Saved version {version.number}.")
            return redirect(request.path)
    elif request.method == "POST":
        status = 400
    return render(request, "configuration/detail.html", {
        "application": app, "environment": env, "history": history, "current": current,
        "form": form, "environments": Environment.objects.order_by("order"),
    }, status=status)


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@login_required
def configuration_diff(request, application: str, environment: str):
    """Two versions of one environment (?from=&to=), or the current configuration of this
    environment against another (?against=staging)."""
    app = get_object_or_404(Application, slug=application)
    env = _visible_environment(request.user, environment)
    against = request.GET.get("against")
    if against:
        other = _visible_environment(request.user, against)
        left, right = (selectors.current(app.pk, other.pk), selectors.current(app.pk, env.pk))
        left_label = f"{other.name} v{left.number}" if left else f"{other.name} (none)"
        right_label = f"{env.name} v{right.number}" if right else f"{env.name} (none)"
    else:
        versions = {v.number: v for v in selectors.versions(app.pk, env.pk)}
        newest = max(versions) if versions else 0
        to_number = _int(request.GET.get("to")) or newest
        from_number = _int(request.GET.get("from")) or max(to_number - 1, 0)
        left, right = versions.get(from_number), versions.get(to_number)
        left_label = f"{env.name} v{from_number}"
        right_label = f"{env.name} v{to_number}"
    rows = selectors.diff_lines(left, right, left_label, right_label)
    return render(request, "configuration/diff.html", {
        "application": app, "environment": env, "rows": rows, "left": left, "right": right,
        "left_label": left_label, "right_label": right_label,
        "environments": Environment.objects.order_by("order"),
    })
