"""Automatic checklist items: evaluated from data, never ticked by hand."""

from __future__ import annotations

from collections.abc import Callable

from deployments.models import Deployment


def _check_status(release, name: str) -> dict:
    value = (release.checks or {}).get(name) or {}
    return value if isinstance(value, dict) else {}


def ci_tests_green(change, rules=None) -> tuple[bool, str]:
    status = _check_status(change.release, "tests").get("status")
    return status == "passed", f"CI tests: {status or 'not reported'}"


def security_scan_clean(change, rules=None) -> tuple[bool, str]:
    scan = _check_status(change.release, "security_scan")
    critical = scan.get("critical", 0) or 0
    ok = scan.get("status") == "passed" and not critical
    return ok, (f"security scan: {scan.get('status') or 'not reported'}"
                + (f", {critical} critical" if critical else ""))


def release_notes_present(change, rules=None) -> tuple[bool, str]:
    return bool(change.release.notes.strip()), "release notes"


def on_call_named(change, rules=None) -> tuple[bool, str]:
    return change.on_call_id is not None, (
        f"on call: {change.on_call.get_username()}" if change.on_call_id else "no on-call named")


def rollback_plan_present(change, rules=None) -> tuple[bool, str]:
    return bool(change.rollback_plan.strip()), "rollback plan"


def environment_healthy(change, rules=None) -> tuple[bool, str]:
    env = change.environment
    if env.locked:
        return False, f"{env.name} is locked"
    key = (change.release.application_id, env.pk)
    if rules is not None and key in getattr(rules, "last_final", {}):
        last = rules.last_final[key]
    elif rules is not None and hasattr(rules, "last_final"):
        last = None  # loaded for this page: nothing finished there yet
    else:
        last = (Deployment.objects.filter(application_id=change.release.application_id,
                                          environment=env, status__in=Deployment.FINAL)
                .order_by("-id").values_list("status", flat=True).first())
    if last == Deployment.Status.FAILED:
        return False, "the last deployment there failed"
    return True, f"{env.name} is available"


def approvals_documented(change, rules=None) -> tuple[bool, str]:
    gates = list(change.gates.all())
    ok = all(g.status == "approved" for g in gates)
    return ok, "every gate approved with its approver recorded"


CHECKS: dict[str, Callable] = {
    fn.__name__: fn for fn in (ci_tests_green, security_scan_clean, release_notes_present,
                               on_call_named, rollback_plan_present, environment_healthy,
                               approvals_documented)
}


def evaluate(item, change, rules=None) -> tuple[bool, str]:
    """(done, why) for a checklist item; manual items report their tick."""
    if not item.auto_check:
        who = item.done_by.get_username() if item.done and item.done_by_id else ""
        return item.done, (f"ticked by {who}" if who else "")
    check = CHECKS.get(item.auto_check)
    if check is None:
        return False, f"unknown automatic check {item.auto_check!r}"
    return check(change, rules)
