from __future__ import annotations

from allauth.socialaccount.providers.openid_connect.provider import OpenIDConnectProvider

from identity.oidc.views import SignatureCheckingAdapter


class PortalOpenIDConnectProvider(OpenIDConnectProvider):
    """allauth's OpenID Connect provider with the portal's views (``identity.oidc.views``)."""

    package = "identity.oidc"
    oauth2_adapter_class = SignatureCheckingAdapter


provider_classes = [PortalOpenIDConnectProvider]
