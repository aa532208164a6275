"""The subscriptions page: who hears about which application and environment."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.shortcuts import redirect, render

from catalog.models import Application, Environment
from core.errors import DomainError
from notifications import services
from notifications.models import Channel, Kind, Subscription, redact_target


class SubscriptionForm(forms.Form):
    environment = forms.ModelChoiceField(queryset=Environment.objects.order_by("order"),
                                         to_field_name="slug", required=False,
                                         empty_label="All environments (administrators)")
    application = forms.ModelChoiceField(queryset=Application.objects.order_by("name"),
                                         to_field_name="slug", required=False,
                                         empty_label="All applications")
    kinds = forms.MultipleChoiceField(choices=Kind.choices, required=False,
                                      widget=forms.CheckboxSelectMultiple,
                                      help_text="None ticked: every kind.")
    channel = forms.ChoiceField(choices=Channel.choices, initial=Channel.EMAIL)
    target = forms.CharField(max_length=500, required=False, label="Address or URL",
                             help_text="Leave empty to receive email at your own address.")


@login_required
def subscriptions(request):
    form = SubscriptionForm(request.POST or None)
    if request.method == "POST" and request.POST.get("delete", "").isdigit():
        try:
            services.subscription_delete(actor=request.user,
                                         subscription_id=int(request.POST["delete"]))
            messages.success(request, "Subscription removed.")
        except DomainError as exc:
            messages.error(request, exc.detail)
        return redirect("subscriptions")
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        personal = data["channel"] == Channel.EMAIL and not data["target"].strip()
        try:
            services.subscription_create(
                actor=request.user, channel=data["channel"], target=data["target"],
                application=data["application"], environment=data["environment"],
                kinds=data["kinds"], user=request.user if personal else None)
        except DomainError as exc:
            if exc.fields:
                for name, errors in exc.fields.items():
                    form.add_error(name if name in form.fields else None, errors)
            else:
                form.add_error(None, exc.detail)
        else:
            messages.success(request, "Subscribed.")
            return redirect("subscriptions")
    mine = (Subscription.objects.filter(Q(user=request.user) | Q(created_by=request.user))
            .select_related("application", "environment", "user").order_by("id"))
    labels = dict(Kind.choices)
    rows = [{"subscription": s, "kinds": [labels.get(k, k) for k in s.kinds],
             "target": redact_target(s.target)} for s in mine]
    return render(request, "notifications/subscriptions.html", {"form": form, "rows": rows},
        status=400 if form.errors else 200)
