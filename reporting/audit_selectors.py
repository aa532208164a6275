"""Read queries behind the auditor pages: history, evidence, compliance, access review.

The portal app reads the deployments and approvals models here read-only, for the
auditor; the imports are inside the functions so that the shared core still loads
before the apps it describes.
"""

from __future__ import annotations

import json
import struct
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from django.contrib.auth import get_user_model
from django.core.exceptions import EmptyResultSet
from django.db import connection, transaction
from django.db.models import CharField, Count, Min, Q, QuerySet, Sum
from django.db.models.functions import Cast
from django.utils import timezone

from approvals.models import Approval, ChangeRequest, ChecklistItem, Gate
from audit.models import AuditEvent, SignInDay
from audit.trail import compute_hash
from catalog.models import Application, Environment, Release
from catalog.permissions import PRODUCTION_POWERS
from core.permissions import permission_grants
from deployments.models import Deployment, DeploymentStep
from identity.models import ApiToken

# Rows on one page of the audit trail and of the auditor's deployment history.
PAGE_SIZE = 50


# ---------------------------------------------------------------------------
# Audit events: filters and keyset pages


@dataclass
class EventFilters:
    action: str = ""
    actor: str = ""
    object_type: str = ""
    object_id: str = ""
    environment: str = ""
    since: datetime | None = None
    until: datetime | None = None
    # An application's slug: events about it, its releases, changes and deployments.
    application: str = ""

    def any(self) -> bool:
        return any([self.action, self.actor, self.object_type, self.object_id,
                    self.environment, self.since, self.until, self.application])


def events_matching(filters: EventFilters) -> QuerySet[AuditEvent]:
    """Events matching ``filters``, newest first, each filter served by an index.

    ``action`` ending in "." is a prefix ("gate."), else exact; ``actor`` is a
    username (its events through the browser and its API tokens) or "system".
    Times become id bounds: events are written in time order under the chain lock,
    so a time range is an id range and every page stays an index range scan.
    """
    qs = AuditEvent.objects.all()
    if filters.action:
        qs = (qs.filter(action__startswith=filters.action) if filters.action.endswith(".")
              else qs.filter(action=filters.action))
    if filters.actor:
        if filters.actor == "system":
            qs = qs.filter(actor_kind="system")
        else:
            user_ids = list(get_user_model().objects.filter(username__iexact=filters.actor)
                            .values_list("pk", flat=True))
            # A deleted user's events keep their frozen name.
            qs = qs.filter(Q(actor_id__in=user_ids) if user_ids
                           else Q(actor_name=filters.actor))
    if filters.object_type:
        qs = qs.filter(object_type=filters.object_type)
    if filters.object_id:
        qs = qs.filter(object_id=filters.object_id)
    if filters.environment:
        qs = qs.filter(environment=filters.environment)
    if filters.application:
        qs = qs.filter(_about_application(filters.application))
    if filters.since:
        first = (AuditEvent.objects.filter(occurred_at__gte=filters.since)
                 .order_by("occurred_at", "id").values_list("id", flat=True).first())
        qs = qs.filter(id__gte=first) if first is not None else qs.none()
    if filters.until:
        last = (AuditEvent.objects.filter(occurred_at__lt=filters.until)
                .order_by("-occurred_at", "-id").values_list("id", flat=True).first())
        qs = qs.filter(id__lte=last) if last is not None else qs.none()
    return qs.order_by("-id")


def _about_application(slug: str) -> Q:
    """Events about the application ``slug``, its releases, changes and deployments."""
    def ids(qs):
        return qs.annotate(as_text=Cast("pk", CharField())).values("as_text")

    return (Q(object_type="application",
              object_id__in=ids(Application.objects.filter(slug=slug)))
            | Q(object_type="release",
                object_id__in=ids(Release.objects.filter(application__slug=slug)))
            | Q(object_type="changerequest",
                object_id__in=ids(ChangeRequest.objects.filter(release__application__slug=slug)))
            | Q(object_type="deployment",
                object_id__in=ids(Deployment.objects.filter(application__slug=slug))))


# ---------------------------------------------------------------------------
# Deployment history for auditors


@dataclass
class DeploymentFilters:
    application: str = ""
    environment: str = ""
    status: str = ""
    requester: str = ""
    approver: str = ""
    version: str = ""
    since: datetime | None = None
    until: datetime | None = None


def deployment_history(filters: DeploymentFilters) -> QuerySet:
    """Every deployment (auditors see all environments), newest first, with its change."""
    qs = Deployment.objects.select_related("application", "environment", "release",
                                           "started_by")
    if filters.application:
        qs = qs.filter(application__slug=filters.application)
    if filters.environment:
        qs = qs.filter(environment__slug=filters.environment)
    if filters.status:
        qs = qs.filter(status=filters.status)
    if filters.version:
        qs = qs.filter(release__version__startswith=filters.version)
    if filters.since:
        qs = qs.filter(created_at__gte=filters.since)
    if filters.until:
        qs = qs.filter(created_at__lt=filters.until)
    if filters.requester:
        qs = qs.filter(change_id__in=ChangeRequest.objects.filter(
            requested_by__username=filters.requester).values("pk"))
    if filters.approver:
        qs = qs.filter(change_id__in=Approval.objects.filter(
            approver__username=filters.approver).values("change_id"))
    return qs.order_by("-id")


def changes_by_id(change_ids) -> dict:
    """The changes behind deployments, with requester, in one query."""
    ids = {i for i in change_ids if i}
    if not ids:
        return {}
    return {c.pk: c for c in ChangeRequest.objects.select_related(
        "requested_by", "on_call", "environment", "release__application").filter(pk__in=ids)}


# ---------------------------------------------------------------------------
# SOP 13.2 compliance checklist, per deployment

SOP_13_2 = [
    ("change_approval", "Change approval documented"),
    ("security_review", "Security review completed"),
    ("backup", "Backup procedures executed"),
    ("monitoring", "Monitoring configured"),
    ("rollback_tested", "Rollback plan tested"),
    ("stakeholders", "Stakeholder notification sent"),
    ("post_review", "Post-deployment review conducted"),
]

DONE, MISSING, NOT_RECORDED = "done", "missing", "not_recorded"


@dataclass
class ComplianceItem:
    key: str
    text: str
    status: str
    evidence: str


@dataclass
class Compliance:
    items: list[ComplianceItem] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(1 for i in self.items if i.status == DONE)

    @property
    def complete(self) -> bool:
        return self.done == len(self.items)

    @property
    def summary(self) -> str:
        return f"{self.done}/{len(self.items)}"


def _checklist_items(change_ids) -> dict[int, dict[str, object]]:
    """Ticked SOP 13.2 compliance items, {change id: {lowercased text: item}}."""
    found: dict[int, dict[str, object]] = defaultdict(dict)
    for item in (ChecklistItem.objects.filter(change_id__in=change_ids, kind="compliance")
                 .select_related("done_by")):
        found[item.change_id][item.text.strip().lower()] = item
    return found


@dataclass
class _ComplianceFacts:
    """What the SOP 13.2 items of some deployments are judged on, read at once."""

    changes: dict
    gates: dict[int, list]  # change id -> its gates
    approvals: dict[int, list]  # gate id -> its standing approvals
    steps: dict[int, dict[str, object]]  # deployment id -> {"backup"|"health_check": step}
    ticked: dict[int, dict[str, object]]  # change id -> {item text: checklist item}
    reviewed: set[str]  # ids of changes whose post-implementation review closed
    first_rollback: dict[int, datetime]  # application id -> its first successful rollback


def _compliance_facts(deployments: list, changes: dict | None = None) -> _ComplianceFacts:
    change_ids = {d.change_id for d in deployments if d.change_id}
    gates: dict[int, list] = defaultdict(list)
    for gate in Gate.objects.filter(change_id__in=change_ids):
        gates[gate.change_id].append(gate)
    approvals: dict[int, list] = defaultdict(list)
    for approval in (Approval.objects.filter(change_id__in=change_ids, decision="approved",
                                             withdrawn_at__isnull=True)
                     .select_related("approver")):
        approvals[approval.gate_id].append(approval)
    steps: dict[int, dict[str, object]] = defaultdict(dict)
    for step in DeploymentStep.objects.filter(deployment__in=[d.pk for d in deployments],
                                              name__in=["backup", "health_check"]):
        steps[step.deployment_id][step.name] = step
    reviewed = set(AuditEvent.objects.filter(
        action="review.closed", object_type="changerequest",
        object_id__in=[str(i) for i in change_ids]).values_list("object_id", flat=True))
    # A rollback of the application that succeeded before a deployment, in any
    # environment (typically staging), shows that its rollback path works.
    app_ids = {d.application_id for d in deployments}
    first_rollback = dict(
        Deployment.objects.filter(application_id__in=app_ids, kind="rollback",
                                  status="succeeded")
        .values("application_id").annotate(first=Min("created_at"))
        .values_list("application_id", "first")) if app_ids else {}
    return _ComplianceFacts(changes=changes_by_id(change_ids) if changes is None else changes,
                            gates=gates,
                            approvals=approvals, steps=steps,
                            ticked=_checklist_items(change_ids), reviewed=reviewed,
                            first_rollback=first_rollback)


def _change_approval_item(d, change, facts: _ComplianceFacts,
                          evidence: bool = True) -> tuple[str, str]:
    change_gates = facts.gates.get(d.change_id, [])
    if change is None:
        return MISSING, "no change request released this deployment"
    if not change_gates:
        return MISSING, f"{change.reference} had no approval gates"
    short = [g for g in change_gates if len(facts.approvals.get(g.pk, [])) < g.required]
    if not evidence:
        return (MISSING if short else DONE), ""
    decided = ", ".join(
        f"{g.get_role_display()}: " + ", ".join(
            f"{a.approver.get_username()} {a.decided_at:%Y-%m-%d %H:%M}"
            for a in facts.approvals.get(g.pk, []))
        for g in change_gates)
    return (MISSING if short else DONE,
            (f"gates without their approvals: "
             f"{', '.join(g.get_role_display() for g in short)}; " if short else "")
            + decided)


def _security_review_item(d, facts: _ComplianceFacts) -> tuple[str, str]:
    security = [g for g in facts.gates.get(d.change_id, []) if g.role == "security"]
    scan = (d.release.checks or {}).get("security_scan") or {}
    if security and all(len(facts.approvals.get(g.pk, [])) >= g.required for g in security):
        who = ", ".join(a.approver.get_username()
                        for g in security for a in facts.approvals.get(g.pk, []))
        return DONE, f"security gate approved by {who}"
    if scan.get("status") == "passed":
        return DONE, ("security scan reported passed by CI"
                      + (f" ({scan['url']})" if scan.get("url") else ""))
    if scan.get("status") == "failed":
        return MISSING, "security scan reported failed"
    return NOT_RECORDED, "no security gate and no security scan reported"


def _step_item(d, name: str, what: str, facts: _ComplianceFacts) -> tuple[str, str]:
    """Backup procedures executed / monitoring configured: the deployment's own steps."""
    step = facts.steps.get(d.pk, {}).get(name)
    if step is None:
        return NOT_RECORDED, f"no {what} in this deployment"
    if step.status == "succeeded":
        return DONE, (f"{what} succeeded"
                      + (f" at {step.finished_at:%Y-%m-%d %H:%M:%S}" if step.finished_at
                         else ""))
    return MISSING, f"{what} {step.status}"


def _rollback_tested_item(d, change, facts: _ComplianceFacts) -> tuple[str, str]:
    plan = (change.rollback_plan or "").strip() if change else ""
    tested = facts.first_rollback.get(d.application_id)
    if not plan:
        return MISSING, "no rollback plan written"
    if tested and tested < d.created_at:
        return DONE, (f"rollback plan written; rollbacks of {d.application.slug} have "
                      f"succeeded since {tested:%Y-%m-%d}")
    return NOT_RECORDED, "rollback plan written; no test of it recorded"


def _post_review_item(change, facts: _ComplianceFacts) -> tuple[str, str]:
    if change is not None and str(change.pk) in facts.reviewed:
        return DONE, "post-implementation review closed by CAB"
    return NOT_RECORDED, "no review recorded"


def _with_tick(key: str, text: str, judged: tuple[str, str], ticks: dict) -> ComplianceItem:
    """An item the portal holds no evidence for is done when someone ticked it on the
    change's compliance checklist; the tick (who, when, note) is its evidence."""
    status, evidence = judged
    tick = ticks.get(text.lower())
    if status != DONE and tick is not None and tick.done:
        who = tick.done_by.get_username() if tick.done_by else "automatic check"
        when = f" on {tick.done_at:%Y-%m-%d %H:%M}" if tick.done_at else ""
        note = f": {tick.note}" if tick.note else ""
        status, evidence = DONE, f"ticked by {who}{when}{note}"
    return ComplianceItem(key, text, status, evidence)


def compliance_for(deployments, *, changes: dict | None = None,
                   evidence: bool = True) -> dict[int, Compliance]:
    """SOP 13.2 status of each deployment, computed in a fixed number of queries.

    Each item is "done" when the portal holds evidence for it: the data it records
    itself (gates and approvals, reported CI checks, the backup and health-check
    steps, the post-implementation review) or the item ticked on the change's
    compliance checklist, with who ticked it. What the portal cannot know and nobody
    ticked is "not_recorded"; a control that failed is "missing".

    ``changes`` (by id) saves reading them again; ``evidence=False`` judges without
    writing who approved when (a list shows the count of items done only).
    """
    deployments = list(deployments)
    facts = _compliance_facts(deployments, changes)
    result = {}
    for d in deployments:
        change = facts.changes.get(d.change_id)
        judged = [
            ("change_approval", _change_approval_item(d, change, facts, evidence)),
            ("security_review", _security_review_item(d, facts)),
            ("backup", _step_item(d, "backup", "backup step", facts)),
            ("monitoring", _step_item(d, "health_check", "post-deployment health check",
                                      facts)),
            ("rollback_tested", _rollback_tested_item(d, change, facts)),
            # Stakeholder notification sent: from the change's checklist tick only.
            ("stakeholders", (NOT_RECORDED,
                              "not ticked on the change's compliance checklist")),
            ("post_review", _post_review_item(change, facts)),
        ]
        ticks = facts.ticked.get(d.change_id, {})
        result[d.pk] = Compliance([_with_tick(key, text, verdict, ticks)
                                   for (key, verdict), (_, text) in zip(judged, SOP_13_2,
                                                                        strict=True)])
    return result


# ---------------------------------------------------------------------------
# Evidence behind one deployment


def evidence_events(deployment, change) -> list[dict]:
    """Every audit event about the deployment, its change and its release, oldest first,
    each re-hashed so the page can say whether it is intact."""
    q = Q(object_type="deployment", object_id=str(deployment.pk)) | Q(
        object_type="release", object_id=str(deployment.release_id))
    if change is not None:
        q |= Q(object_type="changerequest", object_id=str(change.pk))
    events = list(AuditEvent.objects.filter(q).order_by("id"))
    return [{"event": e, "intact": compute_hash(e) == e.hash} for e in events]


def evidence(deployment) -> dict:
    change = changes_by_id([deployment.change_id]).get(deployment.change_id)
    gates = list(Gate.objects.filter(change=change).prefetch_related("approvals__approver")
                 ) if change else []
    decisions = list(Approval.objects.filter(change=change).select_related("approver", "gate")
                     .order_by("decided_at", "id")) if change else []
    checklist = (list(ChecklistItem.objects.filter(change=change).select_related("done_by"))
                 if change is not None else [])
    return {
        "deployment": deployment,
        "change": change,
        "gates": gates,
        "decisions": decisions,
        "checklist": checklist,
        "steps": list(deployment.steps.order_by("position")),
        "log": list(deployment.log_lines.order_by("seq")[:2000]),
        "log_count": deployment.log_lines.count(),
        "events": evidence_events(deployment, change),
        "compliance": compliance_for([deployment])[deployment.pk],
    }


# ---------------------------------------------------------------------------
# Access review (SOP 13.1: monitor access to deployment systems)


@dataclass
class Factor:
    """A second factor a person enrolled (allauth's Authenticator)."""

    kind: str  # totp, webauthn, recovery_codes
    enrolled_at: datetime | None
    last_used_at: datetime | None

    @property
    def name(self) -> str:
        from identity.assurance import KIND_NAMES

        return KIND_NAMES.get(self.kind, self.kind)


@dataclass
class AccessRow:
    user: object
    groups: list[str]
    environment_permissions: dict[str, list[str]]
    auditor: bool
    active_tokens: int
    logins: int
    failed_logins: int
    last_seen: datetime | None
    # SOP 10.2: whether they hold Production powers (so must hold a second factor), and
    # the factors they enrolled.
    must_have_second_factor: bool = False
    factors: list[Factor] = field(default_factory=list)

    @property
    def factor_last_used(self) -> datetime | None:
        used = [f.last_used_at for f in self.factors if f.last_used_at]
        return max(used) if used else None

    @property
    def second_factor_missing(self) -> bool:
        return self.must_have_second_factor and not any(
            f.kind in ("totp", "webauthn") for f in self.factors)


def access_review(days: int = 90) -> list[AccessRow]:
    """Who holds what on which environment, and how they used it, in a fixed number of
    queries: for the periodic access review of SOP 13.1."""
    User = get_user_model()
    from allauth.mfa.models import Authenticator

    users = list(User.objects.order_by("username").prefetch_related("groups"))
    environments = list(Environment.objects.all())
    envs = {str(e.pk): e.slug for e in environments}
    production = {e.slug for e in environments if e.production}
    factors: dict[int, list[Factor]] = defaultdict(list)
    for user_id, kind, created, used in Authenticator.objects.order_by(
            "created_at", "id").values_list("user_id", "type", "created_at", "last_used_at"):
        factors[user_id].append(Factor(kind=kind, enrolled_at=created, last_used_at=used))
    user_grants, group_grants = permission_grants(Environment)
    by_group: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for gid, obj, codename in group_grants:
        by_group[gid].append((obj, codename))
    by_user: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for uid, obj, codename in user_grants:
        by_user[uid].append((obj, codename))
    auditors = set(User.objects.filter(
        Q(user_permissions__codename="view_audit_trail")
        | Q(groups__permissions__codename="view_audit_trail")).values_list("pk", flat=True))
    tokens = dict(ApiToken.objects.active().values("user_id").annotate(n=Count("id"))
                  .values_list("user_id", "n"))
    # Counted per day as the trail is written (``SignInDay``): a few rows per person
    # and day, however many events the trail holds.
    # Refusals are counted for the names of the people listed, whatever else was tried.
    since = (timezone.now() - timedelta(days=days)).date()
    recent = SignInDay.objects.filter(day__gte=since).order_by()
    logins = dict(recent.filter(action="auth.login").values_list("actor_id")
                  .annotate(n=Sum("count")))
    failures = dict(recent.filter(action="auth.login_failed",
                                  name__in=[u.get_username() for u in users])
                    .values_list("name").annotate(n=Sum("count")))
    rows = []
    for user in users:
        perms: dict[str, set[str]] = defaultdict(set)
        for group in user.groups.all():
            for obj, codename in by_group.get(group.pk, []):
                perms[envs.get(obj, obj)].add(codename)
        for obj, codename in by_user.get(user.pk, []):
            perms[envs.get(obj, obj)].add(codename)
        if user.is_superuser:
            perms = {slug: {"all"} for slug in envs.values()}
        rows.append(AccessRow(
            user=user,
            groups=sorted(g.name for g in user.groups.all()),
            environment_permissions={k: sorted(v) for k, v in sorted(perms.items())},
            auditor=user.is_superuser or user.pk in auditors,
            active_tokens=tokens.get(user.pk, 0),
            logins=logins.get(user.pk, 0),
            failed_logins=failures.get(user.get_username(), 0),
            last_seen=user.last_login,
            must_have_second_factor=user.is_active and (user.is_superuser and bool(production)
                                                        or any(perms.get(slug, set())
                                                               & PRODUCTION_POWERS
                                                               for slug in production)),
            factors=factors.get(user.pk, []),
        ))
    return rows


# ---------------------------------------------------------------------------
# Exports, streamed by PostgreSQL
#
# Each export line is built by PostgreSQL inside ``COPY (SELECT ...) TO STDOUT``
# over the very query the page filters with, so Python only moves bytes: no row
# objects, no per-row encoding, and memory stays at one batch whatever the size.
# The SQL below reproduces, value for value, what the Python cell functions of the
# views write (``_csv_cell`` of the auditor CSV, ``_cell`` of the API CSV,
# DjangoJSONEncoder for JSON Lines). A ``before``/``after`` value the SQL cannot
# render the same way (nested objects, fractions, non-ASCII, a bare scalar) comes
# back as a ``#``-prefixed JSON array of the raw row, and the view's own Python
# renders that line: identical output, slower only for those rare rows.

EXPORT_BATCH_BYTES = 1 << 16
FALLBACK_MARK = 35  # "#": an export line never starts with it (lines start with the id)

_HEAD = struct.Struct(">hi")
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def _sql_iso(column: str, *, sep: str = "T", fraction: str = "US", zulu: bool = False) -> str:
    """``datetime.isoformat()`` of a timestamptz in UTC (DjangoJSONEncoder style when
    ``zulu``: milliseconds and "Z"). The fraction is left out when the microseconds
    are zero, as Python does (milliseconds are cut from them, not rounded)."""
    at = f"({column} AT TIME ZONE 'UTC')"
    return (f"(CASE WHEN date_trunc('second', {column}) = {column}"
            f" THEN to_char({at}, 'YYYY-MM-DD\"{sep}\"HH24:MI:SS')"
            f" ELSE to_char({at}, 'YYYY-MM-DD\"{sep}\"HH24:MI:SS.{fraction}') END"
            f" || '{'Z' if zulu else '+00:00'}')")


def _sql_ip(column: str) -> str:
    """An inet as Django reads it (the address alone for a single host)."""
    return (f"(CASE WHEN masklen({column}) = CASE family({column}) WHEN 4 THEN 32 ELSE 128 END"
            f" THEN host({column}) ELSE {column}::text END)")


def _sql_csv_cell(expr: str) -> str:
    """One CSV cell of a text value: a leading formula character quoted with ``'``
    (as the views' cell functions do), then csv.writer's minimal quoting."""
    text = (f"(CASE WHEN left({expr}, 1) IN ('=', '+', '-', '@', E'\\t', E'\\r')"
            f" THEN '''' || {expr} ELSE {expr} END)")
    return (f"(CASE WHEN {text} ~ '[,\"\\r\\n]' THEN '\"' || replace({text}, '\"', '\"\"')"
            f" || '\"' ELSE {text} END)")


def _sql_flat(text: str, chars: str) -> str:
    """Whether ``text`` (a jsonb's text) is an object whose keys and string values use
    only ``chars`` (a regular expression class body) and whose other values are
    integers, booleans or null: what the fast paths below can write as it stands."""
    string = f'"[{chars}]*"'
    pair = f"{string}: ({string}|-?[0-9]+|true|false|null)"
    return f"({text} ~ '^\\{{({pair}(, {pair})*)?\\}}$')"


# Printable ASCII without " and \ (sorted JSON); also without ' and : (Python repr).
_JSON_PLAIN = r" !#-\[\]-~"
_REPR_PLAIN = r" !#-&(-9;-\[\]-~"


def _sql_quoted(text: str) -> str:
    """A CSV cell that csv.writer would quote (it holds a quote or a comma)."""
    return f"""('"' || replace({text}, '"', '""') || '"')"""


def _sql_json_sorted_cell(column: str) -> str:
    """The CSV cell of ``json.dumps(value, sort_keys=True)`` (ASCII) of a flat object
    whose values are strings, integers, booleans or null; '' for none; NULL for
    anything else (the row is then rendered by the view's Python).

    When the keys already come in code point order (always, with one key) and the
    strings need no escaping, the jsonb's own text is that JSON; otherwise the keys
    are sorted one by one. Every expression here is written once per row: the row's
    line is built in a single pass."""
    text = f"{column}::text"
    simple = ("(jsonb_typeof(v) IN ('string', 'boolean', 'null')"
              " OR (jsonb_typeof(v) = 'number' AND v::text ~ '^-?[0-9]+$'))")
    in_order = (f"(strpos({text}, ', \"') = 0 OR (SELECT array_agg(k ORDER BY n) = array_agg("
                f"k ORDER BY k COLLATE \"C\") FROM jsonb_object_keys({column})"
                " WITH ORDINALITY AS o(k, n)))")
    sorted_ = ("'{' || string_agg(to_json(k)::text || ': ' || v::text, ', '"
               " ORDER BY k COLLATE \"C\") || '}'")
    return (f"(CASE WHEN {column} IS NULL OR jsonb_typeof({column}) = 'null' THEN ''"
            f" WHEN {column} = '{{}}'::jsonb THEN '{{}}'"
            f" WHEN {_sql_flat(text, _JSON_PLAIN)} AND {in_order} THEN {_sql_quoted(text)}"
            f" WHEN jsonb_typeof({column}) = 'object' AND octet_length({text}) = length({text})"
            f" THEN (SELECT CASE WHEN bool_and({simple}) THEN {_sql_quoted(sorted_)} END"
            f" FROM jsonb_each({column}) AS j(k, v)) END)")


def _sql_python_repr_cell(column: str) -> str:
    """The CSV cell of ``str(value)`` (Python's repr of the dict) of a flat object whose
    keys and string values are printable ASCII without quotes or backslashes, and
    whose other values are integers, booleans or null; '' for none; NULL for anything
    else (the row is then rendered by the view's Python).

    With no colon in its strings either, the jsonb's text becomes that repr by swapping
    the quotes and the three literals; otherwise it is written value by value. A repr
    here holds no double quote, so it is quoted exactly when it holds a comma."""
    text = f"{column}::text"
    safe = r"'^[ -!#-&(-\[\]-~]*$'"
    simple = (f"(k ~ {safe} AND ((jsonb_typeof(v) = 'string' AND (v #>> '{{}}') ~ {safe})"
              " OR jsonb_typeof(v) IN ('boolean', 'null')"
              " OR (jsonb_typeof(v) = 'number' AND v::text ~ '^-?[0-9]+$')))")
    value = ("CASE jsonb_typeof(v) WHEN 'string' THEN '''' || (v #>> '{}') || ''''"
             " WHEN 'boolean' THEN CASE WHEN v = 'true'::jsonb THEN 'True' ELSE 'False' END"
             " WHEN 'null' THEN 'None' ELSE v::text END")
    swapped = (f"replace(replace(replace(translate({text}, '\"', ''''), ': true', ': True'),"
               " ': false', ': False'), ': null', ': None')")
    by_value = "'{' || string_agg('''' || k || ''': ' || " + value + ", ', ' ORDER BY n) || '}'"
    return (f"(CASE WHEN {column} IS NULL OR jsonb_typeof({column}) = 'null' THEN ''"
            f" WHEN {column} = '{{}}'::jsonb THEN '{{}}'"
            f" WHEN {_sql_flat(text, _REPR_PLAIN)} THEN CASE WHEN strpos({text}, ',') > 0"
            f" THEN '\"' || {swapped} || '\"' ELSE {swapped} END"
            f" WHEN jsonb_typeof({column}) = 'object' THEN"
            f" (SELECT CASE WHEN bool_and({simple}) THEN CASE WHEN strpos({by_value}, ',') > 0"
            f" THEN '\"' || {by_value} || '\"' ELSE {by_value} END END"
            f" FROM jsonb_each({column}) WITH ORDINALITY AS j(k, v, n)) END)")


def _sql_fallback(fields: list[str]) -> str:
    """The raw row as a JSON array, for the view's Python to render."""
    values = []
    for name in fields:
        column = f'e."{name}"'
        if name == "occurred_at":
            values.append(_sql_iso(column))
        elif name == "ip":
            values.append(_sql_ip(column))
        else:
            values.append(column)
    return f"'#' || json_build_array({', '.join(values)})::text"


def export_csv_line_sql(fields: list[str], *, style: str) -> tuple[str, str]:
    """SQL for one CSV line of an event (alias ``e``) with the cells of ``fields``.

    ``style`` "auditor" writes times as ``isoformat()`` and JSON values as sorted JSON
    (``_csv_cell``); "api" writes ``str()`` of each value (``_cell``). A row whose
    JSON values the SQL cannot render becomes a fallback line instead.
    """
    render = _sql_json_sorted_cell if style == "auditor" else _sql_python_repr_cell
    cells, texts = [], []
    for name in fields:
        column = f'e."{name}"'
        if name == "id":
            cells.append(f"{column}::text")
        elif name == "occurred_at":
            cells.append(_sql_iso(column, sep="T" if style == "auditor" else " "))
        elif name in ("before", "after"):
            cells.append(render(column))
        else:
            value = f"coalesce({_sql_ip(column)}, '')" if name == "ip" else column
            texts.append(value)
            cells.append(f"\x00{len(texts) - 1}\x00")
    line = " || ',' || ".join(cells)
    # Most rows hold no cell that needs quoting or a formula mark: one regular expression
    # over all their text cells (each after a \x1f) finds those that do, and only they
    # take the cell by cell path.
    check = " || ".join(f"E'\\x1f' || {value}" for value in texts)
    fast, slow = line, line
    for i, value in enumerate(texts):
        fast = fast.replace(f"\x00{i}\x00", value)
        slow = slow.replace(f"\x00{i}\x00", _sql_csv_cell(value))
    if texts:
        line = f"CASE WHEN ({check}) ~ '[,\"\\r\\n]|\\x1f[-=+@\\t]' THEN {slow} ELSE {fast} END"
    # A JSON value the SQL cannot render is NULL, and so is the line: the row then goes
    # to the view's Python.
    return f"coalesce({line}, {_sql_fallback(fields)})", ""


def export_jsonl_line_sql(fields: list[str]) -> tuple[str, str]:
    """SQL for one JSON Lines line of an event (alias ``e``): the same keys, order and
    values as ``json.dumps(row, cls=DjangoJSONEncoder, ensure_ascii=False)``, except
    ``occurred_at``, written whole (``isoformat()``, microseconds included) as the hash
    covers it: every exported event can be hashed again elsewhere."""
    parts = []
    for name in fields:
        column = f'e."{name}"'
        if name == "id":
            value = f"{column}::text"
        elif name == "occurred_at":
            value = f"'\"' || {_sql_iso(column)} || '\"'"
        elif name == "ip":
            value = f"coalesce(to_json({_sql_ip(column)})::text, 'null')"
        elif name in ("before", "after"):
            value = f"coalesce({column}::text, 'null')"
        else:
            value = f"coalesce(to_json({column})::text, 'null')"
        parts.append(f"'{', ' if parts else '{'}\"{name}\": ' || {value}")
    return " || ".join(parts) + " || '}'", ""


def export_stream(qs: QuerySet, fields: list[str], line: tuple[str, str], *,
                  terminator: bytes, header: bytes = b"",
                  fallback: Callable[[dict], bytes] | None = None) -> Iterator[bytes]:
    """Stream the export lines of ``qs`` (in its order), built by PostgreSQL with the
    ``line`` SQL, in batches of about 64 KiB.

    The query is the queryset's own SQL, its parameters bound by psycopg's client-side
    quoting (``mogrify``), since ``COPY`` takes no server-side parameters. It runs on
    the request's connection, in its own savepoint or transaction: a client that
    hangs up mid-stream cancels the ``COPY`` and leaves the connection usable.
    """
    empty = qs.query.is_empty()
    if not empty:
        try:
            inner, params = qs.values_list(*fields).query.sql_with_params()
        except EmptyResultSet:
            empty = True
    if header:
        yield header
    if empty:
        return
    expression, join = line
    with transaction.atomic(), connection.cursor() as cursor:
        raw = cursor.cursor
        query = psycopg.ClientCursor(raw.connection).mogrify(inner, params)
        statement = (f"COPY (SELECT {expression} FROM ({query}) AS e {join}) "
                     "TO STDOUT WITH (FORMAT binary)")
        with raw.copy(statement) as copy:
            batch: list = []
            size = 0
            first = True
            for message in copy:
                pos = 0
                if first:
                    # Binary COPY header: signature, flags, extension area.
                    if bytes(message[:11]) != _COPY_SIGNATURE:
                        raise RuntimeError("unexpected COPY header")
                    pos = 15 + 4 + int.from_bytes(message[15:19], "big")
                    first = False
                end = len(message)
                while end - pos >= 6:  # a row (the 2-byte trailer ends the data)
                    count, length = _HEAD.unpack_from(message, pos)
                    if count != 1:
                        raise RuntimeError("unexpected COPY row")
                    data = message[pos + 6:pos + 6 + length]
                    pos += 6 + length
                    if data[0] == FALLBACK_MARK:
                        data = fallback(_fallback_row(fields, data[1:]))
                    batch.append(data)
                    batch.append(terminator)
                    size += length
                    if size >= EXPORT_BATCH_BYTES:
                        yield b"".join(batch)
                        batch, size = [], 0
            if batch:
                yield b"".join(batch)


def _fallback_row(fields: list[str], data) -> dict:
    """The raw row of a fallback line, with the Python types Django would read."""
    row = dict(zip(fields, json.loads(bytes(data)), strict=True))
    if "occurred_at" in row:
        row["occurred_at"] = datetime.fromisoformat(row["occurred_at"])
    return row
