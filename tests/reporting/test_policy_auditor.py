"""The auditor's policy page: the versions, who proposed and approved each, and a past
change re-checked against the version in force when it was decided."""

from __future__ import annotations

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from approvals.models import PolicyVersion
from catalog.models import Application
from tests.approvals.test_policy_versions import PAYMENTS, adopt, with_rules
from tests.factories import ReleaseFactory, request_change


def auditor(demo) -> Client:
    client = Client()
    client.force_login(demo.auditor)
    return client


def test_a_change_decided_under_the_old_version_verifies_against_it(demo):
    payments = Application.objects.create(slug="payments", name="Payments")
    old = request_change(demo.engineer, "staging", release=ReleaseFactory(application=payments))
    adopt(demo, with_rules(PolicyVersion.objects.get().document, rules=PAYMENTS, examples=[]))
    page = auditor(demo).get(f"/auditor/policies/?change={old.reference}")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-recheck="ok"' in html
    assert "v1 <code" in html and "agrees" in html
    # The version list says who proposed and approved the second one.
    assert "techlead" in html and "cab (cab, approved)" in html


def test_a_decision_that_disagrees_with_its_version_is_shown(demo):
    from audit.models import AuditEvent

    change = request_change(demo.engineer, "staging")
    event = AuditEvent.objects.get(action="change.submitted", object_id=str(change.pk))
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE portal_auditevent DISABLE TRIGGER USER")
        AuditEvent.objects.filter(pk=event.pk).update(
            after={**event.after, "gates": {"qa": 1}})
        cursor.execute("ALTER TABLE portal_auditevent ENABLE TRIGGER USER")
    html = auditor(demo).get(f"/auditor/policies/?change={change.pk}").content.decode()
    assert 'data-recheck="mismatch"' in html and "disagrees" in html


def test_the_page_costs_the_same_queries_for_one_decision_or_many(demo):
    change = request_change(demo.engineer, "staging")
    client = auditor(demo)
    client.get("/auditor/policies/")  # warm the session and caches
    with CaptureQueriesContext(connection) as one:
        client.get(f"/auditor/policies/?change={change.pk}")
    from approvals import services
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    with CaptureQueriesContext(connection) as more:
        client.get(f"/auditor/policies/?change={change.pk}")
    assert len(more) == len(one)


def test_only_auditors_see_it(demo):
    client = Client()
    client.force_login(demo.engineer)
    assert client.get("/auditor/policies/").status_code in (403, 404)
