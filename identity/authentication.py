"""Bearer tokens for REST clients: looked up by their SHA-256, never stored in clear."""

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied
from rest_framework import authentication, exceptions

from core import clock, context
from identity.models import ApiToken, hash_token


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request):
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(
                "Send the header as 'Authorization: Bearer <token>'.")
        try:
            raw = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("The token is not valid.") from None
        token = (
            ApiToken.objects.active().select_related("user")
            .filter(token_hash=hash_token(raw)).first()
        )
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("The token is not valid, expired or revoked.")
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=clock.now())
        context.set_client(token.name)
        return token.user, token

    def authenticate_header(self, request):
        return "Bearer"


class SignInLockoutBackend(AxesStandaloneBackend):
    """Refuses a sign-in for a username and address locked out by repeated failures.

    Every sign-in form (the login page, the admin) passes the request. A call without
    one comes from code, not from a person typing a password (Django's test client
    ``login``), and has no address to count failures against: it is passed on to the
    next backend instead of failing.

    With ``PORTAL_LOCAL_LOGIN`` off, every password sign-in (the login page, the admin,
    any form) is refused here, before a password is checked: single sign-on only.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if password is not None and not settings.PORTAL_LOCAL_LOGIN:
            raise PermissionDenied("password sign-in is switched off")
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


class UsernameBackend(ModelBackend):
    """Django's password check, on the username's one spelling (``qA`` is ``qa``)."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        from identity.signin import normalize_username

        if username is not None:
            username = normalize_username(username)
        return super().authenticate(request, username=username, password=password, **kwargs)
