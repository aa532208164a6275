from __future__ import annotations

import logging

import requests
from allauth.account.internal.decorators import login_not_required
from allauth.socialaccount.internal import jwtkit
from allauth.socialaccount.models import SocialApp
from allauth.socialaccount.providers.oauth2.views import OAuth2CallbackView, OAuth2LoginView
from allauth.socialaccount.providers.openid_connect.views import OpenIDConnectOAuth2Adapter
from django.contrib import messages
from django.http import Http404, HttpRequest
from django.shortcuts import redirect

logger = logging.getLogger(__name__)

WRONG_ISSUER = ("The identity provider answered as another issuer than the one configured "
                "(PORTAL_OIDC_ISSUER); you were not signed in. Ask an administrator to "
                "check the single sign-on settings.")

UNREACHABLE = ("The identity provider could not be reached or did not answer as an OpenID "
               "Connect provider does. Try again later, or ask an administrator to check "
               "the single sign-on settings.")


class IssuerMismatch(ValueError):
    pass


class SignatureCheckingAdapter(OpenIDConnectOAuth2Adapter):
    """Decodes the ID token only after checking its signature against the provider's JWKS,
    and only talks to a provider whose discovery document names the configured issuer."""

    @property
    def openid_config(self):
        config = super().openid_config
        configured = self.get_provider().app.settings["server_url"].split("/.well-known/")[0]
        if str(config.get("issuer", "")).rstrip("/") != configured.rstrip("/"):
            raise IssuerMismatch("the discovery document names another issuer")
        return config

    def _decode_id_token(self, app: SocialApp, id_token: str) -> dict:
        return jwtkit.verify_and_decode(
            credential=id_token,
            keys_url=self.openid_config["jwks_uri"],
            issuer=self.openid_config["issuer"],
            audience=app.client_id,
            lookup_kid=jwtkit.lookup_kid_jwk,
            verify_signature=True,
        )


def _run(view_class, request: HttpRequest, provider_id):
    try:
        return view_class.adapter_view(SignatureCheckingAdapter(request, provider_id))(request)
    except SocialApp.DoesNotExist:
        raise Http404 from None
    except IssuerMismatch:
        logger.warning("single sign-on: the provider names another issuer than configured")
        messages.error(request, WRONG_ISSUER)
        return redirect("login")
    except (requests.RequestException, ValueError, KeyError) as exc:
        # The provider's discovery document or keys could not be fetched or read (a
        # wrong issuer, the provider down): the sign-in page says so, nothing is signed in.
        logger.warning("single sign-on: provider discovery failed: %s %s", type(exc).__name__, exc)
        messages.error(request, UNREACHABLE)
        return redirect("login")


@login_not_required
def login(request: HttpRequest, provider_id):
    return _run(OAuth2LoginView, request, provider_id)


@login_not_required
def callback(request: HttpRequest, provider_id):
    return _run(OAuth2CallbackView, request, provider_id)
