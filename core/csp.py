"""The Content-Security-Policy of every response (django-csp), with the single sign-on
provider's origin added to ``form-action``.

The policy itself is ``CONTENT_SECURITY_POLICY`` in the settings: scripts, styles,
images, fonts and connections from the portal's own origin only, no inline script or
style, no ``eval``, no plugins, no framing, forms posted only to the portal. The
sign-in page's single sign-on button posts to the portal, which redirects the browser
to the provider; browsers hold that redirect to ``form-action`` too, so the origin of
each configured OpenID Connect provider is allowed there, read from
``SOCIALACCOUNT_PROVIDERS`` at each response (it can change without a restart)."""

from __future__ import annotations

import urllib.parse

from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings


def sso_origins() -> list[str]:
    """The origins of the configured OpenID Connect providers' ``server_url``."""
    providers = getattr(settings, "SOCIALACCOUNT_PROVIDERS", {}) or {}
    origins = []
    for app in (providers.get("openid_connect") or {}).get("APPS", []):
        url = urllib.parse.urlsplit((app.get("settings") or {}).get("server_url") or "")
        if url.scheme in ("http", "https") and url.netloc:
            origin = f"{url.scheme}://{url.netloc}"
            if origin not in origins:
                origins.append(origin)
    return origins


class PortalCSPMiddleware(CSPMiddleware):
    def get_policy_parts(self, request, response, report_only: bool = False) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only=report_only)
        origins = [*sso_origins(), *getattr(settings, "PORTAL_CSP_FORM_ACTION", [])]
        if origins and not report_only:
            update = dict(parts.update or {})
            update["form-action"] = [*update.get("form-action", []), *origins]
            parts.update = update
        return parts
