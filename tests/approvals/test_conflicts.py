"""Conflicts between changes, shown wherever CAB decides (docs/cab.md): the same
application, a dependency, the same targets, a freeze, the same on-call engineer, in
overlapping windows; blocking only under a policy that says so."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from approvals import conflicts, selectors, services
from approvals.models import ApprovalPolicy, ChangeRequest, Freeze
from audit.models import AuditEvent
from catalog.models import Application, Environment, Target
from catalog.signals import deployment_inputs_changed
from core import clock, dispatch
from core.errors import NotReady
from deployments.models import Deployment
from tests.approvals.test_controls import approve_all
from tests.conftest import PASSWORD
from tests.factories import ReleaseFactory, request_change
from tests.security.test_access_changes_audited import change_page

pytestmark = pytest.mark.django_db


def storefront():
    return Application.objects.get(slug="storefront")


def other_app(slug="payments", *, address=""):
    """Another application with one target in staging (at ``address``)."""
    app = Application.objects.create(slug=slug, name=slug.title())
    Target.objects.create(application=app, environment=Environment.objects.get(slug="staging"),
                          name="node-1", address=address)
    return app


def change(demo, app=None, environment="staging", at=None, **kwargs):
    return request_change(demo.engineer, environment,
                          release=ReleaseFactory(application=app or storefront()),
                          scheduled_for=at, **kwargs)


def found(change_) -> list[conflicts.Conflict]:
    change_.refresh_from_db()
    return conflicts.conflicts_for([change_])[change_.pk]


def kinds(change_) -> list[tuple[str, int | None]]:
    return [(c.kind, c.change_id) for c in found(change_)]


@pytest.fixture
def tomorrow():
    return (clock.now() + timedelta(days=1)).replace(hour=10, minute=0, second=0,
                                                     microsecond=0)


# Each kind ---------------------------------------------------------------------------------

def test_two_changes_of_one_application_in_one_environment_at_overlapping_times_conflict(
        demo, tomorrow):
    first = change(demo, at=tomorrow)
    second = change(demo, at=tomorrow + timedelta(minutes=30))

    assert kinds(first) == [("same_application", second.pk)]
    assert kinds(second) == [("same_application", first.pk)]
    reason = found(first)[0].reason
    assert reason.startswith(f"{second.reference} deploys storefront to staging in an "
                             "overlapping window (")
    assert "10:30–11:30" in reason


def test_no_conflict_when_the_windows_do_not_overlap(demo, tomorrow):
    first = change(demo, at=tomorrow)
    second = change(demo, at=tomorrow + timedelta(hours=1))  # starts as the first ends
    assert kinds(first) == [] and kinds(second) == []


def test_no_conflict_with_a_finished_change(demo, tomorrow):
    first = change(demo, at=tomorrow)
    second = change(demo, at=tomorrow)
    services.change_request_cancel(actor=demo.engineer, change=second)
    assert kinds(first) == []
    assert kinds(second) == []  # a finished change conflicts with nothing


def test_no_conflict_between_unrelated_applications_or_environments(demo, tomorrow):
    first = change(demo, at=tomorrow)
    unrelated = change(demo, app=other_app(address="10.9.9.9"), at=tomorrow)
    elsewhere = change(demo, environment="development", at=tomorrow)
    assert kinds(first) == [] and kinds(unrelated) == [] and kinds(elsewhere) == []


def test_an_open_change_without_a_time_occupies_the_week_ahead(demo):
    unscheduled = change(demo)
    next_week = change(demo, at=clock.now() + timedelta(days=6))
    later = change(demo, at=clock.now() + timedelta(days=9))
    assert kinds(unscheduled) == [("same_application", next_week.pk)]
    assert "not scheduled: any time until" in found(next_week)[0].reason
    assert kinds(later) == []


def test_a_dependency_in_either_direction_conflicts(demo, tomorrow):
    payments = other_app("payments", address="10.0.0.7")
    storefront().depends_on.add(payments)
    mine = change(demo, at=tomorrow)
    theirs = change(demo, app=payments, at=tomorrow)

    assert kinds(mine) == [("dependency", theirs.pk)]
    assert kinds(theirs) == [("dependency", mine.pk)]
    assert (f"{theirs.reference} deploys payments, which storefront depends on, to staging"
            in found(mine)[0].reason)
    assert (f"{mine.reference} deploys storefront, which depends on payments, to staging"
            in found(theirs)[0].reason)


def test_applications_on_the_same_targets_conflict(demo, tomorrow):
    # The storefront's staging target is at 127.0.0.1 (the demo fleet).
    search = other_app("search", address="127.0.0.1")
    mine = change(demo, at=tomorrow)
    theirs = change(demo, app=search, at=tomorrow)
    assert kinds(mine) == [("same_targets", theirs.pk)]
    assert "on the same targets (127.0.0.1)" in found(mine)[0].reason


def test_a_freeze_overlapping_the_window_conflicts_and_is_allowed_where_the_policy_passes_it(
        demo, tomorrow):
    Freeze.objects.create(environment=Environment.objects.get(slug="staging"),
                          starts_at=tomorrow - timedelta(days=1),
                          ends_at=tomorrow + timedelta(minutes=30), reason="Launch week")
    standard = change(demo, at=tomorrow)
    emergency = change(demo, at=tomorrow, change_type="emergency", rollback_plan="Redeploy")
    after = change(demo, app=other_app(), at=tomorrow + timedelta(hours=2))

    freeze = [c for c in found(standard) if c.kind == "freeze"]
    assert [(c.change_id, c.reference, c.allowed) for c in freeze] == [
        (None, "Launch week", False)]
    assert freeze[0].reason.startswith("the freeze “Launch week” in staging")
    allowed = [c for c in found(emergency) if c.kind == "freeze"]
    assert [c.allowed for c in allowed] == [True]
    assert "its policy passes freezes" in allowed[0].reason
    assert kinds(after) == []


def test_the_same_on_call_engineer_for_overlapping_windows_conflicts_across_environments(
        demo, tomorrow):
    staging = change(demo, at=tomorrow, on_call=demo.oncall)
    development = change(demo, app=other_app(), environment="development",
                         at=tomorrow + timedelta(minutes=45), on_call=demo.oncall)
    someone_else = change(demo, app=other_app("billing"), environment="development",
                          at=tomorrow, on_call=demo.techlead)
    assert kinds(staging) == [("on_call", development.pk)]
    assert found(staging)[0].reason.startswith(
        f"{development.reference} (payments to development) has the same on-call engineer, "
        "oncall, in an overlapping window (")
    assert ("on_call", staging.pk) in kinds(development)
    assert all(kind != "on_call" for kind, _ in kinds(someone_else))


def test_a_deploying_change_occupies_now(demo):
    first = approve_all(change(demo), demo)
    with dispatch.override("hold"):
        services.change_request_deploy(actor=demo.engineer, change=first)
    first.refresh_from_db()
    assert first.status == ChangeRequest.Status.DEPLOYING
    soon = change(demo, at=clock.now() + timedelta(minutes=20))
    later = change(demo, at=clock.now() + timedelta(hours=3))
    assert kinds(soon) == [("same_application", first.pk)]
    assert "(deploying now)" in found(soon)[0].reason
    assert kinds(later) == []


# Blocking ----------------------------------------------------------------------------------

def test_conflicts_block_only_under_a_policy_that_says_so(demo):
    first = approve_all(change(demo), demo)
    second = approve_all(change(demo), demo)
    ApprovalPolicy.objects.filter(environment__slug="staging", change_type="standard"
                                  ).update(conflicts_block=True)

    with pytest.raises(NotReady) as refused:
        services.change_request_deploy(actor=demo.engineer, change=first)
    blocker = [b for b in refused.value.blockers if b["code"] == "conflict"]
    assert len(blocker) == 1 and second.reference in blocker[0]["message"]
    assert not Deployment.objects.filter(change_id=first.pk).exists()
    first.refresh_from_db()
    assert first.status == ChangeRequest.Status.APPROVED

    # Without it, the same conflict is shown but the deploy proceeds.
    ApprovalPolicy.objects.filter(environment__slug="staging", change_type="standard"
                                  ).update(conflicts_block=False)
    with dispatch.override("hold"):
        deployment = services.change_request_deploy(actor=demo.engineer, change=first)
    assert deployment.change_id == first.pk
    assert kinds(first) == [("same_application", second.pk)]


def test_a_freeze_the_policy_passes_never_blocks(demo, tomorrow):
    ApprovalPolicy.objects.filter(environment__slug="staging").update(conflicts_block=True)
    Freeze.objects.create(environment=Environment.objects.get(slug="staging"),
                          starts_at=tomorrow, ends_at=tomorrow + timedelta(days=1),
                          reason="Launch week")
    emergency = approve_all(change(demo, change_type="emergency", rollback_plan="Redeploy"),
                            demo)
    assert "conflict" not in [b.code for b in selectors.change_blockers(emergency)]
    standard = change(demo, app=other_app())
    assert "conflict" in [b.code for b in selectors.change_blockers(standard)]


# Where CAB sees them -----------------------------------------------------------------------

def test_the_api_lists_conflicts_on_the_list_and_the_detail(demo, api, tomorrow):
    first = change(demo, at=tomorrow)
    second = change(demo, at=tomorrow)
    client = api(demo.techlead)

    body = client.get(f"/api/v1/changes/{first.pk}/").json()
    assert [(c["change"], c["kind"], c["allowed"]) for c in body["conflicts"]] == [
        (second.pk, "same_application", False)]
    assert body["conflicts"][0]["reason"].startswith(f"{second.reference} deploys storefront")
    rows = {row["id"]: row for row in client.get("/api/v1/changes/").json()["results"]}
    assert [c["change"] for c in rows[second.pk]["conflicts"]] == [first.pk]
    assert rows[first.pk]["conflicts"] == body["conflicts"]


def test_the_conflicts_field_is_in_the_openapi_schema(demo, client):
    client.force_login(demo.cab)
    schema = client.get("/api/schema/?format=json").json()["components"]["schemas"]
    field = schema["ChangeOut"]["properties"]["conflicts"]
    assert field["items"]["$ref"] == "#/components/schemas/ConflictOut"
    assert set(schema["ConflictOut"]["properties"]) == {"change", "kind", "reason", "allowed"}


def test_the_change_list_costs_the_same_queries_with_many_conflicting_changes(
        demo, api, tomorrow):
    client = api(demo.techlead)
    Freeze.objects.create(environment=Environment.objects.get(slug="staging"),
                          starts_at=tomorrow, ends_at=tomorrow + timedelta(days=1),
                          reason="Launch week")
    for _ in range(2):
        change(demo, at=tomorrow, on_call=demo.oncall)
    client.get("/api/v1/changes/")

    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            answer = client.get("/api/v1/changes/")
        assert answer.status_code == 200
        return len(ctx.captured_queries)

    few = count()
    payments = other_app("payments", address="127.0.0.1")
    storefront().depends_on.add(payments)
    for i in range(10):
        change(demo, app=payments if i % 2 else None, at=tomorrow, on_call=demo.oncall)
    assert count() == few
    rows = client.get("/api/v1/changes/").json()["results"]
    assert {c["kind"] for row in rows for c in row["conflicts"]} == {
        "same_application", "dependency", "same_targets", "freeze", "on_call"}


def test_the_change_page_and_the_inbox_show_the_conflicts(demo, client, tomorrow):
    first = change(demo, at=tomorrow)
    second = change(demo, at=tomorrow)
    client.force_login(demo.techlead)

    page = client.get(f"/changes/{first.pk}/").content.decode()
    assert 'id="conflicts-title">Conflicts' in page
    assert f'<a href="/changes/{second.pk}/">{second.reference}</a>' in page
    assert "deploys storefront to staging in an overlapping window" in page

    inbox = client.get("/approvals/").content.decode()
    assert inbox.count(">1 conflict</a>") == 2
    assert f'title="{second.reference} deploys storefront to staging' in inbox


# Dependencies in the admin -----------------------------------------------------------------

def test_editing_dependencies_in_the_admin_is_audited_and_reopens_nothing(
        demo, client, django_capture_on_commit_callbacks):
    assert client.login(username="admin", password=PASSWORD)
    payments = other_app()
    app = storefront()
    url = f"/admin/catalog/application/{app.pk}/change/"
    heard = []

    def listener(sender, **kwargs):
        heard.append(kwargs["what"])

    deployment_inputs_changed.connect(listener, dispatch_uid="test-conflicts-listener")
    try:
        data = change_page(client, url)
        data["executor_settings"] = json.loads(data["executor_settings"])
        data["depends_on"] = [str(payments.pk)]
        with django_capture_on_commit_callbacks(execute=True):
            answer = client.post(url, data)
        assert answer.status_code == 302
        assert list(app.depends_on.all()) == [payments]
        assert heard == []  # what deployments run did not change
        edited = AuditEvent.objects.filter(action="application.changed_in_admin").last()
        assert edited.before["depends_on"] == [] and edited.after["depends_on"] == ["Payments"]

        data["executor_settings"] = json.dumps({"fleet": "demo", "keep_releases": 3})
        with django_capture_on_commit_callbacks(execute=True):
            client.post(url, data)
        assert heard == [  # what runs changed: heard, approvals reopen
            "the executor or executor settings of Storefront changed after approval"]
    finally:
        deployment_inputs_changed.disconnect(dispatch_uid="test-conflicts-listener")


def test_a_conflict_with_a_change_the_reader_may_not_see_names_nothing(demo, api, client):
    production = change(demo, environment="production", on_call=demo.oncall)
    staging = change(demo, app=other_app(), on_call=demo.oncall)  # CAB sees no staging

    body = api(demo.cab).get(f"/api/v1/changes/{production.pk}/").json()
    assert body["conflicts"] == [{"change": None, "kind": "on_call", "allowed": False,
                                  "reason": conflicts.HIDDEN["on_call"]}]
    listed = api(demo.cab).get("/api/v1/changes/").content.decode()
    assert staging.reference not in listed
    client.force_login(demo.cab)
    page = client.get(f"/changes/{production.pk}/").content.decode()
    assert conflicts.HIDDEN["on_call"][1:] in page and staging.reference not in page
    # Under a policy that blocks, the blocker names nothing either.
    ApprovalPolicy.objects.filter(environment__slug="production", change_type="standard"
                                  ).update(conflicts_block=True)
    production.refresh_from_db()
    messages = [b.message for b in selectors.change_blockers(production) if b.code == "conflict"]
    assert messages == ["conflict: " + conflicts.HIDDEN["on_call"]]

    # An administrator sees every environment: the other change is named and linked.
    admin = api(demo.admin).get(f"/api/v1/changes/{production.pk}/").json()
    assert [c["change"] for c in admin["conflicts"]] == [staging.pk]
