from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.core.exceptions import ValidationError
from django.db import transaction

from core import access_audit, services
from core.errors import DomainError
from core.identity import normalize_username
from core.models import ApiToken, AuditEvent


class AuditedModelAdmin(admin.ModelAdmin):
    """An admin whose additions, changes and deletions enter the audit trail with
    before and after, the signed-in administrator as the actor, in the admin's
    transaction (core.access_audit.admin_change_record)."""

    audit_exclude: tuple[str, ...] = ()

    def audit_snapshot(self, obj) -> dict:
        return access_audit.snapshot(obj, exclude=self.audit_exclude)

    def _fresh(self, obj):
        return type(obj)._default_manager.get(pk=obj.pk)

    def save_model(self, request, obj, form, change):
        if change:
            # The stored state, before the form's values are written over it.
            request._audit_before = self.audit_snapshot(self._fresh(obj))
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        # After the inlines and many-to-many fields, so that they are in "after" too.
        obj = form.instance
        access_audit.admin_change_record(
            actor=request.user, obj=obj, verb="changed" if change else "added",
            before=getattr(request, "_audit_before", None) if change else None,
            after=self.audit_snapshot(self._fresh(obj)))
        request._audit_before = None

    def delete_model(self, request, obj):
        before = self.audit_snapshot(obj)
        pk = obj.pk
        super().delete_model(request, obj)
        obj.pk = pk
        access_audit.admin_change_record(actor=request.user, obj=obj, verb="deleted",
                                         before=before, after=None)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for obj in queryset:
                self.delete_model(request, obj)


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """Shown for reference; its objects change only through the services that audit them."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyModelAdmin):
    """Tokens are issued on the tokens page; here an administrator may only revoke them,
    through the service that audits it."""

    list_display = ["name", "user", "prefix", "created_at", "expires_at", "revoked_at",
                    "last_used_at"]
    exclude = ["token_hash"]
    actions = ["revoke"]

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        for token in queryset:
            try:
                services.api_token_revoke(actor=request.user, token=token)
            except DomainError as exc:
                self.message_user(request, f"{token}: {exc.detail}", messages.WARNING)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyModelAdmin):
    """The audit trail is append-only: nobody adds, edits or deletes it from the admin."""

    list_display = ["occurred_at", "actor_name", "action", "object_repr", "environment"]
    list_filter = ["action", "environment"]


def _one_spelling(form) -> str:
    """The username in its one spelling, refused if another account has it in any case
    (core.identity.normalize_username; the database's index refuses it too)."""
    name = normalize_username(form.cleaned_data.get("username"))
    others = get_user_model().objects.filter(username__iexact=name)
    if form.instance.pk:
        others = others.exclude(pk=form.instance.pk)
    if others.exists():
        raise ValidationError("A user with that username already exists.", code="unique")
    return name


class PortalUserCreationForm(AdminUserCreationForm):
    def clean_username(self):
        return _one_spelling(self)


class PortalUserChangeForm(UserChangeForm):
    def clean_username(self):
        return _one_spelling(self)


admin.site.unregister(get_user_model())


@admin.register(get_user_model())
class PortalUserAdmin(UserAdmin):
    """Django's user admin, with usernames in their one spelling: renaming an account to
    another's name in another case is a form error, never a second spelling."""

    form = PortalUserChangeForm
    add_form = PortalUserCreationForm
