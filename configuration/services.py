"""Changing configuration (a new version each time, audited) and handing it to a
deployment with its secret references resolved, on the worker only."""

from __future__ import annotations

import hashlib
import json
import logging
import re

from django.db import IntegrityError, transaction

from audit.trail import audit_record
from catalog.models import Application, Environment
from catalog.permissions import has_env_perm
from configuration import references, secret_policy
from configuration.models import ConfigurationSchema, ConfigurationVersion, SecretAllowance
from configuration.signals import configuration_changed
from configuration.validation import Problem, is_reference, parse
from core import clock
from core.errors import Conflict, Invalid, Refused

logger = logging.getLogger(__name__)

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
VAULT_PATH = re.compile(r"^[A-Za-z0-9_.-][A-Za-z0-9_./-]*$")


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"),
                                     default=str).encode()).hexdigest()


def without_references(value):
    """The document with each secret reference masked: its digest changes only when
    something other than a secret reference does, so a new reference goes back to
    security alone (DESIGN.md section 8)."""
    if isinstance(value, dict):
        return {k: without_references(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_references(v) for v in value]
    return "<secret reference>" if is_reference(value) else value


def _may_edit(actor, environment: Environment) -> bool:
    return (getattr(actor, "is_superuser", False)
            or has_env_perm(actor, "request_change", environment)
            or has_env_perm(actor, "deploy", environment))


def configuration_save(*, actor, application: Application, environment: Environment,
                       document: str, reason: str) -> ConfigurationVersion:
    """Validate ``document`` and store it as the next version. Refuses literal secrets."""
    reason = (reason or "").strip()
    if not reason:
        raise Invalid("say why the configuration changes",
                      fields={"reason": ["Say why the configuration changes."]})
    if not _may_edit(actor, environment):
        raise Refused(f"you may not change configuration in {environment.name}",
                      code="not_permitted")
    schema = (ConfigurationSchema.objects.filter(application=application)
              .values_list("schema", flat=True).first())
    parsed = parse(document, schema)
    refused = _refused_references(parsed, application, environment)
    problems = sorted(parsed.problems + refused, key=lambda p: (p.line or 0, p.path))
    if refused:
        _refusal_audited(actor, application, environment, refused)
    if problems:
        raise Invalid(f"the configuration has {len(problems)} problem"
                      f"{'s' if len(problems) > 1 else ''}",
                      code="secret_not_allowed" if refused else None,
                      fields={"document": [str(p) for p in problems]})
    with transaction.atomic():
        # Serialises saves of one application: numbering stays gapless and ordered.
        Application.objects.select_for_update().filter(pk=application.pk).first()
        latest = (ConfigurationVersion.objects.filter(application=application,
                                                      environment=environment)
                  .order_by("-number").first())
        new_digest = digest(without_references(parsed.data))
        refs_digest = digest(parsed.references)
        if latest is not None and latest.digest == new_digest and latest.document == document:
            raise Conflict("nothing changed since version "
                           f"{latest.number}", code="unchanged")
        try:
            with transaction.atomic():
                version = ConfigurationVersion.objects.create(
                    application=application, environment=environment,
                    number=(latest.number + 1) if latest else 1, document=document,
                    data=parsed.data, digest=new_digest,
                    secret_references=parsed.references,
                    secret_references_digest=refs_digest, author=actor, reason=reason,
                    created_at=clock.now())
        except IntegrityError:
            raise Conflict("someone saved this configuration at the same moment; "
                           "reload and try again", code="concurrent_edit") from None
        audit_record(actor=actor, action="configuration.changed", obj=version,
                     environment=environment.slug, reason=reason,
                     before={"version": latest.number, "digest": latest.digest,
                             "secret_references": latest.secret_references}
                     if latest else None,
                     after={"version": version.number, "digest": new_digest,
                            "secret_references": parsed.references,
                            "application": application.slug})
        transaction.on_commit(lambda: configuration_changed.send(
            sender=ConfigurationVersion, version=version))
    return version


def _refused_references(parsed, application: Application,
                        environment: Environment) -> list[Problem]:
    """A problem, with its line, for each reference outside the allow-list (SOP 7.2)."""
    found = []
    for line, path, reference in parsed.located:
        why = secret_policy.refusal(reference, application_id=application.pk,
                                    environment_id=environment.pk)
        if why:
            found.append(Problem(line, path, why))
    return found


def _refusal_audited(actor, application: Application, environment: Environment,
                     refused: list[Problem]) -> None:
    """A refused secret reference is on the record (references only, never values)."""
    with transaction.atomic():
        audit_record(actor=actor, action="configuration.secret_refused", obj=application,
                     environment=environment.slug, reason=refused[0].message,
                     after={"application": application.slug,
                            "refused": [f"line {p.line}: {p.path}" for p in refused],
                            "code": "secret_not_allowed"})


def secret_allowance_check(*, kind: str, value: str, environment: Environment) -> None:
    """Refuse an allow-list entry that is malformed or that the deny-list covers."""
    if kind not in SecretAllowance.Kind.values:
        raise Invalid(f"unknown kind {kind!r}", fields={"kind": ["Choose vault or env."]})
    probe = value[:-1] if kind == "env" and value.endswith("*") else value
    shape = ENV_NAME if kind == "env" else VAULT_PATH
    if not shape.match(probe):
        raise Invalid(f"{value!r} is not a valid {kind} entry",
                      fields={"value": ["Write a variable name (or a prefix ending in *) or "
                                        "a Vault path (or a prefix ending in /)."]})
    denied = secret_policy.denial(kind, probe, environment.slug)
    if denied:
        raise Invalid(f"{value} cannot be allowed: {denied}", code="secret_denied",
                      fields={"value": [denied]})


def secret_allowance_add(*, actor, application: Application, environment: Environment,
                         kind: str, value: str) -> SecretAllowance:
    """Allow ``application`` to name a Vault path (prefix ending in /) or a variable
    (prefix ending in *) in ``environment``. Administrators only; the deny-list wins."""
    if not getattr(actor, "is_staff", False):
        raise Refused("only administrators change the secret allow-list",
                      code="not_permitted")
    value = (value or "").strip()
    secret_allowance_check(kind=kind, value=value, environment=environment)
    with transaction.atomic():
        try:
            with transaction.atomic():
                entry = SecretAllowance.objects.create(
                    application=application, environment=environment, kind=kind,
                    value=value, created_by=actor)
        except IntegrityError:
            raise Conflict(f"{value} is already allowed", code="already_allowed") from None
        audit_record(actor=actor, action="configuration.secret_allowed", obj=entry,
                     environment=environment.slug,
                     after={"application": application.slug, "kind": kind, "value": value})
    return entry


def secret_allowance_remove(*, actor, allowance: SecretAllowance) -> None:
    """Remove an entry: references it allowed no longer resolve on the worker."""
    if not getattr(actor, "is_staff", False):
        raise Refused("only administrators change the secret allow-list",
                      code="not_permitted")
    with transaction.atomic():
        entry = SecretAllowance.objects.select_for_update().select_related(
            "application", "environment").filter(pk=allowance.pk).first()
        if entry is None:
            return
        audit_record(actor=actor, action="configuration.secret_disallowed", obj=entry,
                     environment=entry.environment.slug,
                     before={"application": entry.application.slug, "kind": entry.kind,
                             "value": entry.value})
        entry.delete()


def render_for_deployment(deployment, *, environ=None,
                          secrets: set[str] | None = None) -> dict:
    """The configuration a deployment runs with, secret references resolved.

    The engine calls it through ``PORTAL_CONFIGURATION_PROVIDER``; ``deployment`` is
    the engine's deployment row (its application, environment, time and id are read).
    A deployment made for a change runs the configuration version it was approved with
    (``inputs["configuration_version"]``); any other, the latest saved before it was made.

    Call it on the worker, just before the executor needs it, and pass the result
    on in memory (the process environment of the deployed service, a pipe): it holds
    secrets, so it is never saved, logged or put in an audit event. Raises
    ``SecretUnavailable`` naming the reference (never a value) when one cannot be read,
    ``SecretNotAllowed`` when the allow-list no longer lets the application name it.
    The resolved values are added to ``secrets``, for masking in the run's log.
    """
    versions = ConfigurationVersion.objects.filter(
        application_id=deployment.application_id, environment_id=deployment.environment_id)
    kept = getattr(deployment, "inputs", None) or {}
    if "configuration_version" in kept:
        # The version the change was approved with, kept when the deployment was made;
        # a version saved since is for the next change (and reopened its approvals).
        if kept["configuration_version"] is None:
            return {}
        version = versions.filter(number=kept["configuration_version"]).first()
    else:
        version = versions.filter(created_at__lte=deployment.created_at).order_by(
            "-number").first()
    if version is None:
        return {}
    for reference in version.secret_references:
        why = secret_policy.refusal(reference, application_id=deployment.application_id,
                                    environment_id=deployment.environment_id)
        if why:
            raise references.SecretNotAllowed(why)
    resolved = references.resolve(version.data, environ=environ, secrets=secrets)
    logger.info("configuration v%s of %s resolved for deployment %s (%s references)",
                version.number, version.application_id, deployment.pk,
                len(version.secret_references))
    return resolved


def secret_for_deployment(deployment, reference: str, *, environ=None) -> str:
    """One secret of the deployment's own environment (the ``ssh`` executor's client key):
    the same policy as a configuration's references (``secret_policy.refusal``: the
    application's namespace in that environment or an allow-list entry, never another
    environment's), resolved on the worker. The engine calls it through
    ``PORTAL_SECRET_RESOLVER``. Raises ``SecretNotAllowed`` or ``SecretUnavailable``,
    naming the reference, never a value."""
    why = secret_policy.refusal(reference, application_id=deployment.application_id,
                                environment_id=deployment.environment_id)
    if why:
        raise references.SecretNotAllowed(why)
    return references.resolve_reference(reference, environ=environ)
