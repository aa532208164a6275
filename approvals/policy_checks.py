"""Re-checking past decisions against the policy version in force then (docs/policies.md):
each audited decision that names a ``policy_digest`` is evaluated again with the version
whose digest it names, over the facts it recorded, and compared with what was decided.

Used by ``verify_audit --policies`` (registered with ``audit.rechecks``) and the
auditor's policy page.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from approvals.models import PolicyVersion
from approvals.policy import document as policy_document
from approvals.policy.evaluate import FactsInvalid, evaluate
from audit.models import AuditEvent

# The decisions whose outcome the policy fixes, and so can be re-checked.
RECHECKED = ("change.submitted", "change.deploying")
# Decisions that name the policy they were taken under without facts to replay.
NAMED = ("gate.approved", "gate.rejected", "gate.approved.refused", "gate.rejected.refused")
START_CODES = {"start_restricted", "policy_error"}


@dataclass
class Recheck:
    event_id: int
    action: str
    change_id: str
    at: str
    digest: str
    version: int | None
    ok: bool
    problem: str = ""
    recorded: dict = field(default_factory=dict)
    expected: dict = field(default_factory=dict)


def _versions(digests: set[str]) -> dict[str, PolicyVersion]:
    found = {}
    for version in PolicyVersion.objects.filter(digest__in=digests).order_by("number"):
        found.setdefault(version.digest, version)
    return found


def recheck_events(events: Iterable[AuditEvent]) -> list[Recheck]:
    """A verdict per event that names a policy digest (others are skipped)."""
    events = [e for e in events if (e.after or {}).get("policy_digest")]
    versions = _versions({e.after["policy_digest"] for e in events})
    results = []
    for event in events:
        after = event.after
        digest = after["policy_digest"]
        version = versions.get(digest)
        result = Recheck(event_id=event.pk, action=event.action, change_id=event.object_id,
                         at=event.occurred_at.isoformat(), digest=digest,
                         version=version.number if version else None, ok=True)
        results.append(result)
        if version is None:
            result.ok, result.problem = False, "no policy version has this digest"
            continue
        facts = after.get("policy_facts")
        if event.action not in RECHECKED or facts is None:
            continue
        try:
            outcome = evaluate(policy_document.parse(version.document), facts)
        except (FactsInvalid, policy_document.PolicyInvalid) as exc:
            result.ok, result.problem = False, f"cannot re-evaluate: {exc}"
            continue
        if event.action == "change.submitted":
            result.recorded = {"gates": after.get("gates") or {}}
            result.expected = {"gates": outcome["gates"]}
            if result.recorded["gates"] != outcome["gates"]:
                result.ok = False
                result.problem = (f"gates set {result.recorded['gates']}, policy "
                                  f"v{version.number} says {outcome['gates']}")
        else:
            refusals = [b["reason"] for b in outcome["blockers"] if b["code"] in START_CODES]
            result.recorded = {"started": True}
            result.expected = {"start_allowed": not refusals, "why": refusals}
            if refusals:
                result.ok = False
                result.problem = (f"started, but policy v{version.number} forbids it: "
                                  + "; ".join(refusals))
    return results


def policy_events(*, change_id: int | None = None):
    """The audited decisions naming a policy, oldest first (one change's, or all)."""
    events = AuditEvent.objects.filter(action__in=RECHECKED + NAMED,
                                       after__has_key="policy_digest")
    if change_id is not None:
        events = events.filter(object_type="changerequest", object_id=str(change_id))
    return events.order_by("pk")


def verify_policies() -> tuple[bool, list[str]]:
    """(all agree, report lines) over the whole trail, for ``verify_audit --policies``."""
    results = []
    # In batches by primary key, so a long trail is read without holding it all.
    last = 0
    while True:
        batch = list(policy_events().filter(pk__gt=last)[:2000])
        if not batch:
            break
        results += recheck_events(batch)
        last = batch[-1].pk
    wrong = [r for r in results if not r.ok]
    lines = [f"policy re-check: {len(results)} decisions name a policy version, "
             f"{sum(1 for r in results if r.action in RECHECKED)} re-evaluated, "
             f"{len(wrong)} disagree"]
    lines += [f"  event {r.event_id} {r.action} change {r.change_id} at {r.at} "
              f"(policy v{r.version or '?'} {r.digest[:12]}…): {r.problem}" for r in wrong]
    return not wrong, lines
