"""Changing configuration (a new version each time, audited) and handing it to a
deployment with its secret references resolved, on the worker only."""

from __future__ import annotations

import hashlib
import json
import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from configuration import references
from configuration.models import ConfigurationSchema, ConfigurationVersion
from configuration.signals import configuration_changed
from configuration.validation import is_reference, parse
from deployments.models import Application, Deployment, Environment
from portal.audit import audit_record
from portal.errors import Conflict, Invalid, Refused
from portal.permissions import has_env_perm

logger = logging.getLogger(__name__)


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
    if not parsed.ok:
        raise Invalid(f"the configuration has {len(parsed.problems)} problem"
                      f"{'s' if len(parsed.problems) > 1 else ''}",
                      fields={"document": [str(p) for p in parsed.problems]})
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
                    created_at=timezone.now())
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


def configuration_schema_set(*, actor, application: Application,
                             schema: dict) -> ConfigurationSchema:
    if not getattr(actor, "is_staff", False):
        raise Refused("only administrators declare an application's schema",
                      code="not_permitted")
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise Invalid(f"not a valid JSON Schema: {exc.message}",
                      fields={"schema": [exc.message]}) from None
    with transaction.atomic():
        current = ConfigurationSchema.objects.select_for_update().filter(
            application=application).first()
        before = current.schema if current else None
        current, _ = ConfigurationSchema.objects.update_or_create(
            application=application,
            defaults={"schema": schema, "updated_by": actor, "updated_at": timezone.now()})
        audit_record(actor=actor, action="configuration.schema_set", obj=current,
                     before={"schema": before}, after={"schema": schema})
    return current


def render_for_deployment(deployment: Deployment, *, environ=None) -> dict:
    """The configuration a deployment runs with, secret references resolved.

    Call it on the worker, just before the executor needs it, and pass the result
    on in memory (the process environment of the deployed service, a pipe): it holds
    secrets, so it is never saved, logged or put in an audit event. Raises
    ``SecretUnavailable`` naming the reference (never a value) when one cannot be read.
    """
    version = (ConfigurationVersion.objects
               .filter(application_id=deployment.application_id,
                       environment_id=deployment.environment_id,
                       created_at__lte=deployment.created_at)
               .order_by("-number").first())
    if version is None:
        return {}
    resolved = references.resolve(version.data, environ=environ)
    logger.info("configuration v%s of %s resolved for deployment %s (%s references)",
                version.number, version.application_id, deployment.pk,
                len(version.secret_references))
    return resolved
