"""The policy pages: the versions, proposing one, a proposal's diff and its decisions."""

from __future__ import annotations

from django.test import Client

from approvals.models import PolicyVersion
from tests.approvals.test_policy_versions import PAYMENTS, with_rules
from tests.conftest import sign_in_with_second_factor


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_tech_lead_proposes_on_the_page_and_sees_the_diff(demo):
    client = signed_in(demo.techlead)
    page = client.get("/policies/")
    assert page.status_code == 200
    assert b"Propose a new version" in page.content
    active = PolicyVersion.objects.get()
    assert active.digest.encode() in page.content
    text = with_rules(active.document, rules=PAYMENTS)
    proposed = client.post("/policies/", {"document": text, "summary": "payments"})
    assert proposed.status_code == 302 and proposed["Location"] == "/policies/2/"
    detail = client.get("/policies/2/").content.decode()
    assert "Changes against v1" in detail
    assert 'class="diff-add">+- name: payments-security' in detail
    assert "You proposed this version: someone else decides it." in detail


def test_a_bad_document_is_shown_again_with_its_problems(demo):
    client = signed_in(demo.techlead)
    answer = client.post("/policies/", {"document": "policy: 1\nenvironments: {x: {y: 1}}\n"})
    assert answer.status_code == 400
    assert b"document.environments.x: unknown key &#x27;y&#x27;" in answer.content
    assert PolicyVersion.objects.count() == 1


def test_cab_and_security_approve_on_the_page_and_the_version_becomes_active(demo):
    text = with_rules(PolicyVersion.objects.get().document, rules=PAYMENTS)
    signed_in(demo.techlead).post("/policies/", {"document": text})
    for person, role in ((demo.cab, "cab"), (demo.security, "security")):
        client = sign_in_with_second_factor(Client(), person)
        page = client.get("/policies/2/").content.decode()
        assert f'<option value="{role}">' in page
        done = client.post("/policies/2/decide", {"role": role, "decision": "approve"})
        assert done.status_code == 302
    assert PolicyVersion.objects.get(number=2).status == PolicyVersion.Status.ACTIVE
    listing = signed_in(demo.engineer).get("/policies/").content.decode()
    assert '<a href="/policies/2/">Version 2</a>' in listing
    assert "Propose a new version" not in listing
    # Backtests are for who proposes, decides or audits policy: no link for an engineer.
    assert "/policies/backtest/" not in listing
    assert "/policies/backtest/" in signed_in(demo.techlead).get("/policies/").content.decode()
