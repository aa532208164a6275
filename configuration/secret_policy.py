"""Which secrets an application's configuration may name in an environment (SOP 7.2, 10.2).

A secret reference is allowed when it lies in the application's own namespace in that
environment, or in an entry an administrator added to its allow-list
(``SecretAllowance``), and it is in none of the denied places. The deny-list always
wins:

- the portal's own settings: ``DJANGO_*``, ``PORTAL_*`` (hook secrets included),
  ``DATABASE_URL``, ``REDIS_URL``, the worker's Vault credentials, ... (the setting
  ``PORTAL_SECRET_DENIED_ENV`` adds names; a trailing ``*`` makes a prefix);
- another environment's namespace: a Development configuration never names
  ``vault:secret/production/...`` or ``${env:PRODUCTION_...}``, whatever an entry says.

The namespace of application ``shop`` in ``development`` is the Vault path
``secret/development/shop`` and below, and the variables ``DEVELOPMENT_SHOP_*``
(templates in ``PORTAL_SECRET_VAULT_NAMESPACE`` and ``PORTAL_SECRET_ENV_NAMESPACE``).

The same check runs when a configuration is saved and again on the worker just before
a reference is resolved, so removing an entry stops a saved reference from resolving.
"""

from __future__ import annotations

import re

from django.conf import settings

from configuration.validation import ENV_REFERENCE, VAULT_REFERENCE

# Variables of the portal and of its worker; never readable by a deployed configuration.
DENIED_ENV = (
    "DJANGO_*", "PORTAL_*", "DATABASE_*", "REDIS_*", "CELERY_*", "VAULT_*", "PG*",
    "SECRET_KEY", "EMAIL_HOST_PASSWORD", "SENTRY_DSN", "AWS_*", "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_*", "SSH_AUTH_SOCK", "GITHUB_TOKEN", "CI_JOB_TOKEN",
)
VAULT_NAMESPACE = "secret/{environment}/{application}/"
ENV_NAMESPACE = "{ENVIRONMENT}_{APPLICATION}_"


def _vault_template() -> str:
    return getattr(settings, "PORTAL_SECRET_VAULT_NAMESPACE", VAULT_NAMESPACE)


def _env_template() -> str:
    return getattr(settings, "PORTAL_SECRET_ENV_NAMESPACE", ENV_NAMESPACE)


def _word(slug: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", slug).upper()


def vault_namespace(application_slug: str, environment_slug: str) -> str:
    return _vault_template().format(environment=environment_slug,
                                    application=application_slug)


def env_namespace(application_slug: str, environment_slug: str) -> str:
    return _env_template().format(ENVIRONMENT=_word(environment_slug),
                                  APPLICATION=_word(application_slug))


def _environment_part(template: str, **values) -> str:
    """The leading part of a namespace that names only the environment."""
    head = template.split("{APPLICATION}")[0].split("{application}")[0]
    return head.format(**values)


def denied_env_patterns() -> tuple[str, ...]:
    return DENIED_ENV + tuple(getattr(settings, "PORTAL_SECRET_DENIED_ENV", ()) or ())


def _matches(name: str, pattern: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern


def _vault_under(path: str, prefix: str) -> bool:
    """``prefix`` ending in ``/`` covers that path and everything below; otherwise
    only that exact path."""
    if prefix.endswith("/"):
        return path == prefix.rstrip("/") or path.startswith(prefix)
    return path == prefix


def _other_environments(environment_slug: str) -> list[str]:
    from catalog.models import Environment

    return [slug for slug in Environment.objects.values_list("slug", flat=True)
            if slug != environment_slug]


def denial(kind: str, value: str, environment_slug: str) -> str | None:
    """Why ``value`` (an env name or a Vault path) is denied, or None. Wins over allows."""
    if kind == "env":
        for pattern in denied_env_patterns():
            if _matches(value, pattern):
                return (f"the variable {value} belongs to the portal itself "
                        f"(denied: {pattern}); it is never handed to a deployment")
        for other in _other_environments(environment_slug):
            head = _environment_part(_env_template(), ENVIRONMENT=_word(other))
            if head and value.startswith(head):
                return (f"the variable {value} belongs to the environment {other}; a "
                        f"configuration names only secrets of its own environment")
    else:
        for other in _other_environments(environment_slug):
            head = _environment_part(_vault_template(), environment=other)
            if head and _vault_under(value, head if head.endswith("/") else head + "/"):
                return (f"the Vault path {value} belongs to the environment {other}; a "
                        f"configuration names only secrets of its own environment")
    return None


def split(reference: str) -> tuple[str, str] | None:
    """("env", NAME) or ("vault", path) of a reference, None when it is not one."""
    match = ENV_REFERENCE.match(reference)
    if match:
        return "env", match.group(1)
    match = VAULT_REFERENCE.match(reference)
    if match:
        return "vault", match.group(1)
    return None


def refusal(reference: str, *, application_id: int, environment_id: int) -> str | None:
    """Why this application may not name ``reference`` in this environment, or None."""
    from catalog.models import Application, Environment
    from configuration.models import SecretAllowance

    parts = split(reference)
    if parts is None:
        return f"{reference!r} is not a secret reference"
    kind, value = parts
    app_slug = Application.objects.filter(pk=application_id).values_list(
        "slug", flat=True).get()
    env_slug = Environment.objects.filter(pk=environment_id).values_list(
        "slug", flat=True).get()
    denied = denial(kind, value, env_slug)
    if denied:
        return f"{reference} is refused: {denied}"
    if kind == "env":
        if value.startswith(env_namespace(app_slug, env_slug)):
            return None
    elif _vault_under(value, vault_namespace(app_slug, env_slug)):
        return None
    entries = SecretAllowance.objects.filter(application_id=application_id,
                                             environment_id=environment_id,
                                             kind=kind).values_list("value", flat=True)
    for entry in entries:
        if (_matches(value, entry) if kind == "env" else _vault_under(value, entry)):
            return None
    where = (f"variables starting with {env_namespace(app_slug, env_slug)}" if kind == "env"
             else f"Vault paths under {vault_namespace(app_slug, env_slug)}")
    return (f"{reference} is not on the allow-list of {app_slug} in {env_slug} "
            f"({where}, or an entry an administrator adds)")
