from django.urls import include, path, re_path

from identity.oidc import views

# The paths and names of allauth's provider (openid_connect_login, _callback), under
# /accounts/oidc/<provider_id>/.
urlpatterns = [
    path("oidc/", include([
        re_path(r"^(?P<provider_id>[^/]+)/", include([
            path("login/", views.login, name="openid_connect_login"),
            path("login/callback/", views.callback, name="openid_connect_callback"),
        ])),
    ])),
]
