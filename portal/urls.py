from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from approvals import api as approvals_api
from approvals import (  # policies as code (docs/policies.md)
    meeting_api,
    meeting_views,
    policy_api,
    policy_backtest_api,
    policy_backtest_views,
    policy_views,
)
from approvals import views as approvals_views
from catalog import api as catalog_api
from configuration import views as configuration_views
from core import api as core_api
from deployments import api as deployments_api
from deployments import views as deployments_views
from identity import signin as identity
from identity import stepup_views, token_api, token_views
from identity import views as identity_views
from integrations import api as integrations_api
from notifications import views as notifications_views
from portal import views
from reporting import api as reporting_api
from reporting import auditor_views, metrics_views, quality_views
from reporting import views as reporting_views
from reporting.prometheus import metrics as prometheus_metrics

api_v1 = [
    path("environments/", catalog_api.EnvironmentList.as_view(), name="api-environments"),
    path("applications/", catalog_api.ApplicationList.as_view(), name="api-applications"),
    path("releases/", catalog_api.ReleaseListCreate.as_view(), name="api-releases"),
    path("releases/<int:pk>/", catalog_api.ReleaseDetail.as_view(), name="api-release"),
    path("changes/", approvals_api.ChangeListCreate.as_view(), name="api-changes"),
    path("changes/<int:pk>/", approvals_api.ChangeDetail.as_view(), name="api-change"),
    path("changes/<int:pk>/approve", approvals_api.ChangeApprove.as_view(),
         name="api-change-approve"),
    path("changes/<int:pk>/reject", approvals_api.ChangeReject.as_view(),
         name="api-change-reject"),
    path("changes/<int:pk>/checklist/<int:item_id>", approvals_api.ChangeChecklistItem.as_view(),
         name="api-change-checklist-item"),
    path("changes/<int:pk>/submit", approvals_api.ChangeSubmit.as_view(),
         name="api-change-submit"),
    path("changes/<int:pk>/deploy", approvals_api.ChangeDeploy.as_view(),
         name="api-change-deploy"),
    path("changes/<int:pk>/cancel", approvals_api.ChangeCancel.as_view(),
         name="api-change-cancel"),
    path("preflight/", approvals_api.Preflight.as_view(), name="api-preflight"),
    path("cab/meetings/", meeting_api.CabMeetingList.as_view(), name="api-cab-meetings"),
    path("cab/meetings/<int:pk>/", meeting_api.CabMeetingDetail.as_view(),
         name="api-cab-meeting"),
    path("deployments/", deployments_api.DeploymentList.as_view(), name="api-deployments"),
    path("deployments/<int:pk>/", deployments_api.DeploymentDetail.as_view(),
         name="api-deployment"),
    path("deployments/<int:pk>/log", deployments_api.DeploymentLog.as_view(),
         name="api-deployment-log"),
    path("deployments/<int:pk>/rollback", deployments_api.DeploymentRollback.as_view(),
         name="api-deployment-rollback"),
    path("deployments/<int:pk>/cancel", deployments_api.DeploymentCancel.as_view(),
         name="api-deployment-cancel"),
    path("deployments/<int:pk>/retry-step", deployments_api.DeploymentRetryStep.as_view(),
         name="api-deployment-retry-step"),
    path("deployments/<int:pk>/mark-step-done",
         deployments_api.DeploymentMarkStepDone.as_view(),
         name="api-deployment-mark-step-done"),
    path("auth/step-up", token_api.StepUp.as_view(), name="api-auth-step-up"),
    path("audit-events/", reporting_api.AuditEventList.as_view(), name="api-audit-events"),
    path("metrics/dora/", metrics_views.DoraMetrics.as_view(), name="api-dora"),
    path("hooks/ci", integrations_api.CiHook.as_view(), name="api-hook-ci"),
    path("hooks/push", integrations_api.PushHook.as_view(), name="api-hook-push"),
    path("hooks/alertmanager", integrations_api.AlertmanagerHook.as_view(),
         name="api-hook-alertmanager"),
    # The policy document (docs/policies.md).
    path("policies/current", policy_api.PolicyCurrent.as_view(), name="api-policy-current"),
    path("policies/", policy_api.PolicyPropose.as_view(), name="api-policies"),
    path("policies/test", policy_api.PolicyTest.as_view(), name="api-policy-test"),
    path("policies/backtest", policy_backtest_api.PolicyBacktest.as_view(),
         name="api-policy-backtest"),
    path("policies/shadow", policy_backtest_api.PolicyShadowDifferences.as_view(),
         name="api-policy-shadow"),
    # Anything else under /api/v1/ is a JSON 404, never an HTML page.
    re_path(r"^.*$", core_api.not_found),
]

urlpatterns = [
    path("", reporting_views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    # Identity: django-allauth signs in (password, passkey, single sign-on; docs/identity.md)
    path("login/", identity.PortalLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("approvals/", approvals_views.inbox, name="inbox"),
    # CAB meetings (docs/cab.md)
    # The policy document's versions (docs/policies.md).
    path("policies/", policy_views.policies, name="policies"),
    path("policies/backtest/", policy_backtest_views.policy_backtest, name="policy-backtest"),
    path("policies/<int:number>/", policy_views.policy_version, name="policy-version"),
    path("policies/<int:number>/decide", policy_views.policy_decide, name="policy-decide"),
    path("auditor/policies/", auditor_views.policy_versions, name="auditor-policies"),
    path("cab/", meeting_views.cab_home, name="cab"),
    path("cab/meetings/<int:pk>/", meeting_views.meeting_detail, name="cab-meeting"),
    path("cab/meetings/<int:pk>/attendance", meeting_views.meeting_attendance,
         name="cab-attendance"),
    path("cab/meetings/<int:pk>/agenda", meeting_views.meeting_agenda_build,
         name="cab-agenda-build"),
    path("cab/meetings/<int:pk>/items/add", meeting_views.meeting_item_add, name="cab-item-add"),
    path("cab/meetings/<int:pk>/items/<int:item_id>/decide", meeting_views.meeting_item_decide,
         name="cab-item-decide"),
    path("cab/meetings/<int:pk>/items/<int:item_id>/defer", meeting_views.meeting_item_defer,
         name="cab-item-defer"),
    path("cab/meetings/<int:pk>/close", meeting_views.meeting_close, name="cab-close"),
    path("cab/meetings/<int:pk>/minutes.pdf", meeting_views.meeting_minutes_pdf,
         name="cab-minutes-pdf"),
    path("cab/meetings/<int:pk>/next.ics", meeting_views.meeting_next_ics, name="cab-next-ics"),
    path("changes/", approvals_views.change_list, name="change-list"),
    path("changes/new/", approvals_views.change_new, name="change-new"),
    path("changes/<int:pk>/", approvals_views.change_detail, name="change-detail"),
    path("changes/<int:pk>/gates/<slug:role>/decide", approvals_views.gate_decide,
         name="gate-decide"),
    path("changes/<int:pk>/deploy", approvals_views.change_deploy, name="change-deploy"),
    path("changes/<int:pk>/cancel", approvals_views.change_cancel, name="change-cancel"),
    path("changes/<int:pk>/edit/", approvals_views.change_edit, name="change-edit"),
    path("changes/<int:pk>/submit", approvals_views.change_submit, name="change-submit"),
    path("changes/<int:pk>/gates/<slug:role>/withdraw", approvals_views.approval_withdraw,
         name="approval-withdraw"),
    path("changes/<int:pk>/checklist/<int:item_id>", approvals_views.checklist_tick,
         name="checklist-tick"),
    path("changes/<int:pk>/review/close", approvals_views.review_close, name="review-close"),
    path("calendar/", approvals_views.calendar, name="calendar"),
    path("environments/", approvals_views.environments, name="environments"),
    path("delegations/", approvals_views.delegations, name="delegations"),
    path("notifications/", notifications_views.subscriptions, name="subscriptions"),
    path("releases/new/", deployments_views.release_new, name="release-new"),
    path("deployments/", deployments_views.deployment_history, name="deployment-history"),
    path("deployments/<int:pk>/", deployments_views.deployment_detail,
         name="deployment-detail"),
    path("deployments/<int:pk>/progress", deployments_views.deployment_progress,
         name="deployment-progress"),
    # Deployment engine pages: live targets and verdicts, rollback and cancel buttons.
    path("deployments/<int:pk>/engine", deployments_views.deployment_engine,
         name="deployment-engine"),
    path("deployments/<int:pk>/rollback", deployments_views.deployment_rollback,
         name="deployment-rollback"),
    path("deployments/<int:pk>/cancel", deployments_views.deployment_cancel,
         name="deployment-cancel"),
    path("deployments/<int:pk>/retry-step", deployments_views.deployment_retry_step,
         name="deployment-retry-step"),
    path("deployments/<int:pk>/mark-step-done", deployments_views.deployment_mark_step_done,
         name="deployment-mark-step-done"),
    # Auditors: the audit trail and its exports, deployment evidence, access review.
    path("audit/", auditor_views.audit_events, name="audit-list"),
    path("audit/export.csv", auditor_views.audit_export_csv, name="audit-export-csv"),
    path("audit/export.jsonl", auditor_views.audit_export_jsonl, name="audit-export-jsonl"),
    path("auditor/deployments/", auditor_views.deployment_history,
         name="auditor-deployments"),
    path("auditor/deployments/<int:pk>/", auditor_views.deployment_evidence,
         name="auditor-evidence"),
    path("auditor/access/", auditor_views.access_review, name="auditor-access"),
    # The quality of approvals: reviews or rubber stamps (docs/cab.md).
    path("audit/approval-quality/", quality_views.approval_quality,
         name="auditor-approval-quality"),
    path("audit/approval-quality.csv", quality_views.approval_quality_csv,
         name="auditor-approval-quality-csv"),
    # Evidence bundles an auditor verifies offline, and the verifier itself.
    path("auditor/deployments/<int:pk>/bundle.zip", auditor_views.deployment_bundle,
         name="auditor-evidence-bundle"),
    path("audit/bundle.zip", auditor_views.audit_bundle, name="audit-bundle"),
    path("audit/verify_bundle.py", auditor_views.verifier_download, name="audit-verifier"),
    # Access review export, with second factors (SOP 10.2, 13.1).
    path("auditor/access/export.csv", auditor_views.access_review_export_csv,
         name="auditor-access-export-csv"),
    path("tokens/", token_views.token_list, name="token-list"),
    path("tokens/<int:pk>/revoke", token_views.token_revoke, name="token-revoke"),
    # Metrics, dashboard, notifications and configuration (SOP 4.1, 7, 11.2, 12.1).
    path("metrics/", metrics_views.metrics_page, name="metrics"),
    path("dashboard/", metrics_views.dashboard, name="dashboard"),
    path("dashboard/live", metrics_views.dashboard_live, name="dashboard-live"),
    path("configuration/<slug:application>/<slug:environment>/",
         configuration_views.configuration_detail, name="configuration-detail"),
    path("configuration/<slug:application>/<slug:environment>/diff",
         configuration_views.configuration_diff, name="configuration-diff"),
    # The admin has no password form of its own: /admin/login/ leads to the portal's
    # sign-in (password, second factor, lockout), then back to the admin.
    path("admin/login/", identity.admin_login, name="admin-login"),
    # The admin pages of the API tokens and the audit trail moved with their models
    # (from the core app to identity and audit): an old link leads to the new page.
    re_path(r"^admin/core/apitoken/(?P<rest>.*)$",
            RedirectView.as_view(url="/admin/identity/apitoken/%(rest)s", query_string=True)),
    re_path(r"^admin/core/auditevent/(?P<rest>.*)$",
            RedirectView.as_view(url="/admin/audit/auditevent/%(rest)s", query_string=True)),
    path("admin/", admin.site.urls),
    # Second factors: finish the action a step-up interrupted.
    path("step-up/<str:stash>/", stepup_views.resume, name="step-up-resume"),
    path("second-factor-required/", stepup_views.second_factor_required,
         name="second-factor-required"),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its start-up script as a file of its own (?script): the
    # Content-Security-Policy allows no inline script.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"),
         name="api-docs"),
    # Prometheus scrapes (docs/observability.md); the DORA page is /metrics/ above.
    path("metrics", prometheus_metrics, name="prometheus-metrics"),
    # Identity: the Security page (second factors, sessions); allauth's own overview
    # pages lead to it.
    path("account/security/", identity_views.security, name="security"),
    path("account/security/sessions/end-others", identity_views.sessions_end_others,
         name="security-sessions-end-others"),
    path("accounts/2fa/", RedirectView.as_view(pattern_name="security")),
    path("accounts/sessions/", RedirectView.as_view(pattern_name="security")),
    # Passwords are set by an administrator, not reset by e-mail: refused before
    # allauth's include (its reset request, key and done pages).
    re_path(r"^accounts/password/reset/", identity_views.not_offered),
    path("accounts/", include("allauth.urls")),
]

# The portal's own error pages (JSON under /api/), never a traceback.
handler400 = "core.error_views.bad_request"
handler403 = "core.error_views.permission_denied"
handler404 = "core.error_views.page_not_found"
handler500 = "core.error_views.server_error"
