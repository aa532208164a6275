from django.contrib import admin
from django.db import transaction

from audit import access
from audit.models import AuditEvent
from core.admin import ReadOnlyModelAdmin


class AuditedModelAdmin(admin.ModelAdmin):
    """An admin whose additions, changes and deletions enter the audit trail with
    before and after, the signed-in administrator as the actor, in the admin's
    transaction (audit.access.admin_change_record)."""

    audit_exclude: tuple[str, ...] = ()

    def audit_snapshot(self, obj) -> dict:
        return access.snapshot(obj, exclude=self.audit_exclude)

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
        access.admin_change_record(
            actor=request.user, obj=obj, verb="changed" if change else "added",
            before=getattr(request, "_audit_before", None) if change else None,
            after=self.audit_snapshot(self._fresh(obj)))
        request._audit_before = None

    def delete_model(self, request, obj):
        before = self.audit_snapshot(obj)
        pk = obj.pk
        super().delete_model(request, obj)
        obj.pk = pk
        access.admin_change_record(actor=request.user, obj=obj, verb="deleted",
                                         before=before, after=None)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for obj in queryset:
                self.delete_model(request, obj)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyModelAdmin):
    """The audit trail is append-only: nobody adds, edits or deletes it from the admin."""

    list_display = ["occurred_at", "actor_name", "action", "object_repr", "environment"]
    list_filter = ["action", "environment"]
