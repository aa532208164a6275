from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from approvals import api as approvals_api
from approvals import views as approvals_views
from deployments import api as deployments_api
from deployments import views as deployments_views
from portal import api_views, views

api_v1 = [
    path("environments/", deployments_api.EnvironmentList.as_view(), name="api-environments"),
    path("applications/", deployments_api.ApplicationList.as_view(), name="api-applications"),
    path("releases/", deployments_api.ReleaseCreate.as_view(), name="api-releases"),
    path("releases/<int:pk>/", deployments_api.ReleaseDetail.as_view(), name="api-release"),
    path("changes/", approvals_api.ChangeListCreate.as_view(), name="api-changes"),
    path("changes/<int:pk>/", approvals_api.ChangeDetail.as_view(), name="api-change"),
    path("changes/<int:pk>/approve", approvals_api.ChangeApprove.as_view(),
         name="api-change-approve"),
    path("changes/<int:pk>/reject", approvals_api.ChangeReject.as_view(),
         name="api-change-reject"),
    path("changes/<int:pk>/deploy", approvals_api.ChangeDeploy.as_view(),
         name="api-change-deploy"),
    path("changes/<int:pk>/cancel", approvals_api.ChangeCancel.as_view(),
         name="api-change-cancel"),
    path("deployments/", deployments_api.DeploymentList.as_view(), name="api-deployments"),
    path("deployments/<int:pk>/", deployments_api.DeploymentDetail.as_view(),
         name="api-deployment"),
    path("deployments/<int:pk>/log", deployments_api.DeploymentLog.as_view(),
         name="api-deployment-log"),
    path("audit-events/", api_views.AuditEventList.as_view(), name="api-audit-events"),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("approvals/", approvals_views.inbox, name="inbox"),
    path("changes/", approvals_views.change_list, name="change-list"),
    path("changes/new/", approvals_views.change_new, name="change-new"),
    path("changes/<int:pk>/", approvals_views.change_detail, name="change-detail"),
    path("changes/<int:pk>/gates/<slug:role>/decide", approvals_views.gate_decide,
         name="gate-decide"),
    path("changes/<int:pk>/deploy", approvals_views.change_deploy, name="change-deploy"),
    path("changes/<int:pk>/cancel", approvals_views.change_cancel, name="change-cancel"),
    path("releases/new/", deployments_views.release_new, name="release-new"),
    path("deployments/", deployments_views.deployment_history, name="deployment-history"),
    path("deployments/<int:pk>/", deployments_views.deployment_detail,
         name="deployment-detail"),
    path("deployments/<int:pk>/progress", deployments_views.deployment_progress,
         name="deployment-progress"),
    path("audit/", views.audit_list, name="audit-list"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
