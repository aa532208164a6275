"""The secret allow-list, edited by administrators: entries are added or removed
(never edited in place), each through the service that checks and audits it."""

from django import forms
from django.contrib import admin

from configuration import services
from configuration.models import SecretAllowance
from core.errors import DomainError


class SecretAllowanceForm(forms.ModelForm):
    class Meta:
        model = SecretAllowance
        fields = ["application", "environment", "kind", "value"]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("environment") and cleaned.get("kind") and cleaned.get("value"):
            try:
                services.secret_allowance_check(kind=cleaned["kind"],
                                                value=cleaned["value"].strip(),
                                                environment=cleaned["environment"])
            except DomainError as exc:
                raise forms.ValidationError(exc.detail) from None
        return cleaned


@admin.register(SecretAllowance)
class SecretAllowanceAdmin(admin.ModelAdmin):
    form = SecretAllowanceForm
    list_display = ["application", "environment", "kind", "value", "created_by", "created_at"]
    list_filter = ["environment", "kind"]

    def has_change_permission(self, request, obj=None):
        return False  # remove the entry and add another

    def save_model(self, request, obj, form, change):
        saved = services.secret_allowance_add(
            actor=request.user, application=obj.application, environment=obj.environment,
            kind=obj.kind, value=obj.value)
        obj.pk = saved.pk

    def delete_model(self, request, obj):
        services.secret_allowance_remove(actor=request.user, allowance=obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            services.secret_allowance_remove(actor=request.user, allowance=obj)
