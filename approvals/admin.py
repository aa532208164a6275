from django.contrib import admin

from approvals.models import ApprovalPolicy, ChangeRequest, PolicyGate


class PolicyGateInline(admin.TabularInline):
    model = PolicyGate
    extra = 0


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(admin.ModelAdmin):
    list_display = ["environment", "change_type"]
    inlines = [PolicyGateInline]


@admin.register(ChangeRequest)
class ChangeRequestAdmin(admin.ModelAdmin):
    list_display = ["reference", "release", "environment", "change_type", "status", "created_at"]
    list_filter = ["status", "environment", "change_type"]

    def has_change_permission(self, request, obj=None):
        return False  # decisions go through the approval workflow, which audits them
