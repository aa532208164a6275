"""What a CAB member finds in the demo history (docs/cab.md, "In the demo"): meetings
held with their minutes, the next agenda with a conflict and a high-risk change, and an
approval that lapsed. Read as a person reads them: the API, the pages, the PDF."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from approvals.models import ApprovalPolicy, ChangeRequest, Gate
from audit.models import AuditEvent


def the_cab_room_has_its_history(api) -> None:
    cab = get_user_model().objects.get(username="cab")
    client = api(cab)
    page = Client()
    page.force_login(cab)
    meetings = client.get("/api/v1/cab/meetings/").json()["results"]
    held = [m for m in meetings if m["status"] == "closed"]
    # The next meetings: planned, and to come (a running portal's beat plans them too).
    planned = sorted((m for m in meetings if m["status"] == "planned"
                      and m["starts_at"] > timezone.now().isoformat()),
                     key=lambda m: m["starts_at"])
    assert len(held) >= 3, meetings
    assert planned, meetings
    home = page.get("/cab/").content.decode()
    assert all(f"/cab/meetings/{m['id']}/" in home for m in held[:3] + planned[:1])

    _meetings_held_with_decisions_and_minutes(client, page, held)
    following = client.get(f"/api/v1/cab/meetings/{planned[0]['id']}/").json()
    _the_next_agenda_has_a_conflict(page, following)
    _a_high_risk_change_waits_with_its_extra_gate(client, following)
    _an_approval_lapsed_and_a_gate_expired(following)
    # The agenda says why the lapsed change is back and why the risky one has a gate more.
    agenda = page.get(f"/cab/meetings/{following['id']}/").content.decode()
    assert "data-lapsed" in agenda and "Approvals lapsed" in agenda
    assert "data-risk-gate" in agenda and "gate was added" in agenda
    past = page.get(f"/cab/meetings/{held[0]['id']}/").content.decode()
    assert "data-closed-note" in past and "data-lapsed" not in past


def _meetings_held_with_decisions_and_minutes(client, page, held) -> None:
    decisions = {}
    for summary in held:
        meeting = client.get(f"/api/v1/cab/meetings/{summary['id']}/").json()
        minutes = AuditEvent.objects.get(action="cab.minutes", object_id=str(meeting["id"]))
        assert minutes.after["attendees"], minutes.after
        for item in meeting["items"]:
            if item["decision"]:
                decisions.setdefault(item["decision"], []).append((meeting, item, minutes))
                # Decided by a member present, as the minutes say.
                assert item["decided_by"] in minutes.after["attendees"]
    assert len(decisions.get("approve", [])) >= 2, decisions
    [(_, rejected, minutes)] = decisions["reject"]
    assert rejected["comment"]
    [(_, deferred, _)] = decisions["defer"]
    assert deferred["deferred"] and deferred["defer_reason"]
    # Someone was absent once: the minutes say who.
    assert any(AuditEvent.objects.filter(action="cab.minutes").values_list("after__absent",
                                                                           flat=True))
    # The approvals taken in a meeting are the CAB gate's, with the member's second factor.
    meeting, approved, _ = decisions["approve"][0]
    event = AuditEvent.objects.get(action="gate.approved", object_id=str(approved["change"]),
                                   after__role="cab")
    assert event.actor_name == approved["decided_by"]
    assert event.after["second_factor"]["fresh"] is True
    # The minutes as a PDF.
    rejected_meeting = next(m for m, i, _ in decisions["reject"])
    pdf = page.get(f"/cab/meetings/{rejected_meeting['id']}/minutes.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert rejected["reference"].encode() in pdf.content
    assert b"reject" in pdf.content


def _the_next_agenda_has_a_conflict(page, following) -> None:
    on_agenda = {item["change"] for item in following["items"]}
    pair = [(item, c) for item in following["items"] for c in item["conflicts"]
            if c["kind"] in ("dependency", "same_application") and c["change"] in on_agenda]
    assert pair, following["items"]
    item, conflict = pair[0]
    agenda = page.get(f"/cab/meetings/{following['id']}/").content.decode()
    assert item["reference"] in agenda and "depends on" in agenda
    detail = page.get(f"/changes/{item['change']}/").content.decode()
    assert 'id="conflicts"' in detail and f"CR-{conflict['change']}" in detail
    inbox = page.get("/approvals/").content.decode()
    assert "badge-conflict" in inbox


def _a_high_risk_change_waits_with_its_extra_gate(client, following) -> None:
    risky = max(following["items"], key=lambda item: item["risk_score"] or 0)
    change = ChangeRequest.objects.get(pk=risky["change"])
    policy = ApprovalPolicy.objects.get(environment=change.environment,
                                        change_type=change.change_type)
    assert policy.risk_threshold and risky["risk_score"] >= policy.risk_threshold
    body = client.get(f"/api/v1/changes/{change.pk}/").json()
    assessment = body["risk_assessment"]
    assert assessment["score"] >= 60  # the "high" band
    assert any(f["name"] == "migrations" and f["points"] for f in assessment["factors"])
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert change.gates.filter(role=policy.risk_extra_gate,
                               status=Gate.Status.PENDING).exists()
    added = AuditEvent.objects.get(action="change.risk_gate_added", object_id=str(change.pk))
    assert added.after["role"] == policy.risk_extra_gate


def _an_approval_lapsed_and_a_gate_expired(following) -> None:
    lapsed = AuditEvent.objects.get(action="change.approvals_lapsed")
    change = ChangeRequest.objects.get(pk=lapsed.object_id)
    assert {w["role"] for w in lapsed.after["withdrawn"]} >= {"cab", "security", "business"}
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert change.execute_by < timezone.now()
    assert not change.gates.exclude(status=Gate.Status.PENDING).exists()
    # Approved in a meeting before; back on the next agenda.
    assert AuditEvent.objects.filter(action="cab.item_decided", object_id=str(change.pk),
                                     after__decision="approve").exists()
    assert change.pk in {item["change"] for item in following["items"]}
    expired = AuditEvent.objects.get(action="gate.expired")
    gates = Gate.objects.filter(change_id=expired.object_id, status=Gate.Status.EXPIRED)
    assert gates.exists()
    assert ChangeRequest.objects.get(pk=expired.object_id).status == ChangeRequest.Status.DRAFT
