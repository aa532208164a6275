"""The document's compiled form: the policy rows the pages, the blockers and the
deadlines read (``ApprovalPolicy`` and its gates, maintenance windows, freezes, and the
groups holding `deploy` and `rollback` on each environment).

``render_rows()`` writes the rows as a document (the first version of a portal that
had only rows); ``compile_rows(document)`` writes a document into the rows. What rows
cannot say (conditions in CEL: rules and start restrictions) the decisions ask the
evaluator for (``approvals.services.governing``).
"""

from __future__ import annotations

from datetime import UTC

import yaml
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from guardian.models import GroupObjectPermission
from guardian.shortcuts import assign_perm, remove_perm

from approvals.models import ApprovalPolicy, Freeze, MaintenanceWindow, PolicyGate
from approvals.policy.document import CHANGE_TYPES, DEFAULT_POLICY_CHANGE_GATES, WEEKDAYS, Document
from catalog.models import Environment

GROUP_POWERS = {"deploy": "deploy", "rollback": "rollback"}  # document key -> codename
_FLAGS = ("requires_window", "requires_promotion", "requires_on_call",
          "requires_rollback_plan", "passes_freeze", "opens_review", "conflicts_block")
_LIMITS = ("approve_within_hours", "execute_within_days")
HEADER = """\
# The portal's policy document (docs/policies.md): who must approve what, when a change
# may start, and who may deploy and roll back. Propose a change of it with
# `manage.py policy import FILE` or `portalctl policy import FILE`; check its examples
# with `policy test FILE`.
"""


def _iso(moment) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _group_grants(codenames: list[str]) -> dict[tuple[int, str], list[str]]:
    ct = ContentType.objects.get_for_model(Environment)
    grants: dict[tuple[int, str], list[str]] = {}
    for object_pk, codename, name in (GroupObjectPermission.objects
                                      .filter(content_type=ct, permission__codename__in=codenames)
                                      .values_list("object_pk", "permission__codename",
                                                   "group__name")
                                      .order_by("group__name")):
        grants.setdefault((int(object_pk), codename), []).append(name)
    return grants


def render_data() -> dict:
    """The rows as a document's data, with one example per policy that checks its gates."""
    environments = {}
    examples = []
    grants = _group_grants(list(GROUP_POWERS.values()))
    policies = ApprovalPolicy.objects.select_related("environment").prefetch_related("gates")
    by_env: dict[int, list[ApprovalPolicy]] = {}
    for policy in policies:
        by_env.setdefault(policy.environment_id, []).append(policy)
    windows: dict[int, list[MaintenanceWindow]] = {}
    for window in MaintenanceWindow.objects.order_by("weekday", "start_time", "pk"):
        windows.setdefault(window.environment_id, []).append(window)
    freezes: dict[int, list[Freeze]] = {}
    for freeze in Freeze.objects.order_by("starts_at", "pk"):
        freezes.setdefault(freeze.environment_id, []).append(freeze)
    for env in Environment.objects.order_by("order", "slug"):
        entry: dict = {}
        zones = {w.timezone for w in windows.get(env.pk, [])}
        if len(zones) == 1:
            entry["timezone"] = zones.pop()
        for key, codename in GROUP_POWERS.items():
            entry[key] = grants.get((env.pk, codename), [])
        kinds = {}
        for policy in sorted(by_env.get(env.pk, []),
                             key=lambda p: CHANGE_TYPES.index(p.change_type)):
            kinds[policy.change_type] = _policy_data(policy)
            gates = dict(kinds[policy.change_type]["gates"])
            examples.append({
                "name": f"{policy.change_type} changes to {env.slug} need their gates",
                "facts": {"at": "2026-01-05T12:00:00Z",
                          "change": {"environment": env.slug,
                                     "change_type": policy.change_type}},
                "expect": {"gates": gates}})
        entry["change_types"] = kinds
        entry["windows"] = [
            {"weekday": WEEKDAYS[w.weekday], "start": f"{w.start_time:%H:%M}",
             "end": f"{w.end_time:%H:%M}",
             **({} if entry.get("timezone") == w.timezone else {"timezone": w.timezone})}
            for w in windows.get(env.pk, [])]
        entry["freezes"] = [
            {"starts_at": _iso(f.starts_at), "ends_at": _iso(f.ends_at),
             "recurs_yearly": f.recurs_yearly, "reason": f.reason}
            for f in freezes.get(env.pk, [])]
        environments[env.slug] = entry
    return {"policy": 1, "timezone": "UTC", "environments": environments, "rules": [],
            "start_restrictions": [],
            "policy_changes": {"gates": dict(DEFAULT_POLICY_CHANGE_GATES)},
            "examples": examples}


def _policy_data(policy: ApprovalPolicy) -> dict:
    data: dict = {"gates": {g.role: g.required for g in policy.gates.all()}}
    for name in _FLAGS:
        data[name] = getattr(policy, name)
    for name in _LIMITS:
        data[name] = getattr(policy, name)
    data["risk_threshold"] = policy.risk_threshold
    data["risk_extra_gate"] = policy.risk_extra_gate or None
    if data["risk_threshold"] is None or data["risk_extra_gate"] is None:
        data["risk_threshold"] = data["risk_extra_gate"] = None
    return data


def dump(data: dict) -> str:
    return HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=88)


def render_rows() -> str:
    """The rows as the text of a policy document."""
    return dump(render_data())


def unknown_names(document: Document) -> list[str]:
    """Environments and groups the document names that the portal does not have."""
    problems = []
    slugs = set(Environment.objects.values_list("slug", flat=True))
    groups = set(Group.objects.values_list("name", flat=True))
    for slug, env in document.data["environments"].items():
        if slug not in slugs:
            problems.append(f"document.environments.{slug}: no such environment")
        for key in GROUP_POWERS:
            for name in env.get(key) or []:
                if name not in groups:
                    problems.append(f"document.environments.{slug}.{key}: no group "
                                    f"named {name!r}")
    return problems


def compile_rows(document: Document) -> dict:
    """Write ``document`` into the rows, in one transaction: the environments it names
    get exactly its policies, gates, windows, freezes and deploy/rollback groups.
    Returns counts of what was written and the group grants changed, for the audit
    event."""
    written = {"policies": 0, "gates": 0, "windows": 0, "freezes": 0, "grants": []}
    with transaction.atomic():
        envs = {e.slug: e for e in Environment.objects.filter(
            slug__in=list(document.data["environments"]))}
        for slug, data in document.data["environments"].items():
            env = envs[slug]
            kinds = data.get("change_types") or {}
            ApprovalPolicy.objects.filter(environment=env).exclude(
                change_type__in=list(kinds)).delete()
            for kind, policy_data in kinds.items():
                values = {name: bool(policy_data.get(name)) for name in _FLAGS}
                values.update({name: policy_data.get(name) for name in _LIMITS})
                values["risk_threshold"] = policy_data.get("risk_threshold")
                values["risk_extra_gate"] = policy_data.get("risk_extra_gate") or ""
                policy, _ = ApprovalPolicy.objects.update_or_create(
                    environment=env, change_type=kind, defaults=values)
                PolicyGate.objects.filter(policy=policy).delete()
                PolicyGate.objects.bulk_create(
                    PolicyGate(policy=policy, role=role, required=count)
                    for role, count in (policy_data.get("gates") or {}).items())
                written["policies"] += 1
                written["gates"] += len(policy_data.get("gates") or {})
            windows, freezes = document.calendar[slug]
            MaintenanceWindow.objects.filter(environment=env).delete()
            MaintenanceWindow.objects.bulk_create(
                MaintenanceWindow(environment=env, weekday=w.weekday, start_time=w.start_time,
                                  end_time=w.end_time, timezone=w.timezone) for w in windows)
            Freeze.objects.filter(environment=env).delete()
            Freeze.objects.bulk_create(
                Freeze(environment=env, starts_at=f.starts_at, ends_at=f.ends_at,
                       recurs_yearly=f.recurs_yearly, reason=f.reason) for f in freezes)
            written["windows"] += len(windows)
            written["freezes"] += len(freezes)
            written["grants"] += _set_group_grants(env, data)
    return written


def _set_group_grants(env: Environment, data: dict) -> list[dict]:
    """The groups holding `deploy` and `rollback` on ``env`` become the document's;
    grants to single people are left to the access review. Returns what changed, for
    the activation's audit event."""
    changed = []
    for key, codename in GROUP_POWERS.items():
        if key not in data:
            continue
        wanted = set(data[key])
        held = set(_group_grants([codename]).get((env.pk, codename), []))
        for name in sorted(held - wanted):
            remove_perm(f"catalog.{codename}", Group.objects.get(name=name), env)
            changed.append({"environment": env.slug, "permission": codename, "group": name,
                            "granted": False})
        for name in sorted(wanted - held):
            assign_perm(f"catalog.{codename}", Group.objects.get(name=name), env)
            changed.append({"environment": env.slug, "permission": codename, "group": name,
                            "granted": True})
    return changed

