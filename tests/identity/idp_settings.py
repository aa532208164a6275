"""A small OpenID Connect provider (django-oauth-toolkit) for the single sign-on tests.

It runs as its own process (``python -m tests.identity.idp_server``) with its own
database on the embedded PostgreSQL, signs ID tokens with RS256 and a key made at
start, and puts a ``groups`` claim in them. Nothing here is part of the portal.
"""

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def _new_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


HERE = Path(__file__).resolve().parent
SECRET_KEY = _new_key_pem()[-64:]
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.identity.idp_app"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "oauth2_provider",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [HERE / "idp_templates"],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
}]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": os.environ.get("IDP_DATABASE", "identity_provider_test"),
    "USER": "portal",
    "HOST": "127.0.0.1",
    "PORT": os.environ["PORTAL_PG_PORT"],
}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
LOGIN_URL = "/login/"
# The portal and the provider share the host 127.0.0.1: cookies of their own names.
SESSION_COOKIE_NAME = "idp_session"
CSRF_COOKIE_NAME = "idp_csrf"
OAUTH2_PROVIDER = {
    "OIDC_ENABLED": True,
    "OIDC_ISS_ENDPOINT": os.environ.get("IDP_ISSUER", ""),
    "OIDC_RSA_PRIVATE_KEY": _new_key_pem(),
    "PKCE_REQUIRED": True,
    "SCOPES": {"openid": "OpenID Connect", "profile": "Profile", "email": "E-mail"},
    "OAUTH2_VALIDATOR_CLASS": "tests.identity.idp_app.GroupsClaimValidator",
    "ALLOWED_REDIRECT_URI_SCHEMES": ["http", "https"],
}
# A second key: the "forged" mode signs with it while naming the real key's id.
FORGERY_KEY = _new_key_pem()
