"""URLs, views and the claims of the test OpenID Connect provider (see idp_settings)."""

import json

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.models import User
from django.http import JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from jwcrypto import jwk, jwt
from oauth2_provider.models import get_application_model
from oauth2_provider.oauth2_validators import OAuth2Validator

# What the tests set through /control/: each user's groups, and whether ID tokens are
# signed with a key the provider does not publish.
STATE = {"groups": {}, "forge": False}


class GroupsClaimValidator(OAuth2Validator):
    oidc_claim_scope = None  # every claim below goes into the ID token

    def get_additional_claims(self, request):
        user = request.user
        return {"preferred_username": user.username, "email": user.email,
                "email_verified": True, "name": user.get_full_name() or user.username,
                "groups": STATE["groups"].get(user.username, [])}

    def finalize_id_token(self, id_token, token, token_handler, request):
        signed = super().finalize_id_token(id_token, token, token_handler, request)
        if not STATE["forge"]:
            return signed
        # The same claims, signed with a key the provider does not publish while naming
        # the published key's id: a forgery only a signature check catches.
        claims = jwt.JWT(jwt=signed).token.objects["payload"].decode()
        header = {"typ": "JWT", "alg": "RS256", "kid": request.client.jwk_key.thumbprint()}
        forged = jwt.JWT(header=json.dumps(header), claims=claims)
        forged.make_signed_token(jwk.JWK.from_pem(settings.FORGERY_KEY.encode()))
        return forged.serialize()


@csrf_exempt
def control(request):
    """Test control: register the client's redirect URI, set users, groups, forgery."""
    body = json.loads(request.body or b"{}")
    if "client" in body:
        client = body["client"]
        Application = get_application_model()
        Application.objects.filter(client_id=client["client_id"]).delete()
        Application.objects.create(
            name="portal", client_id=client["client_id"], client_secret=client["secret"],
            hash_client_secret=False, client_type="confidential",
            authorization_grant_type="authorization-code", algorithm="RS256",
            redirect_uris=client["redirect_uri"], skip_authorization=True)
    for username, password in body.get("users", {}).items():
        user, _ = User.objects.get_or_create(username=username,
                                             defaults={"email": f"{username}@example.org"})
        user.set_password(password)
        user.save()
    STATE["groups"].update(body.get("groups", {}))
    if "forge" in body:
        STATE["forge"] = bool(body["forge"])
    return JsonResponse({"ok": True})


urlpatterns = [
    path("login/", auth_views.LoginView.as_view()),
    path("control/", control),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
]
