"""The auditor's pages: who may see them, filters, keyset pages, exports, evidence,
the SOP 13.2 checklist and the access review, with constant query counts."""

import csv
import io
import json
from datetime import datetime, timedelta

import pytest
from django.core.serializers.json import DjangoJSONEncoder
from django.core.signals import request_finished
from django.db import close_old_connections, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from approvals import services as approval_services
from audit.models import AuditEvent
from audit.trail import compute_hash
from catalog.models import Environment
from reporting.audit_selectors import compliance_for
from reporting.exports import EXPORT_FIELDS, JSONL_FIELDS, api_cell
from reporting.exports import auditor_cell as _csv_cell
from tests.audit.audit_helpers import (
    approved_production_change,
    make_deployment,
    record,
    sql,
    triggers_disabled,
)
from tests.conftest import PASSWORD, totp_code
from tests.factories import ReleaseFactory, request_change

AUDITOR_URLS = ["/audit/", "/audit/export.csv", "/audit/export.jsonl",
                "/auditor/deployments/", "/auditor/access/"]


def queries(client, url) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    if hasattr(response, "streaming_content"):
        b"".join(response.streaming_content)
    return len(ctx.captured_queries)


# --- who may see them ---------------------------------------------------------


@pytest.mark.parametrize("url", AUDITOR_URLS + ["/auditor/deployments/1/"])
def test_anonymous_visitors_are_sent_to_sign_in(demo, client, url):
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/login/")


@pytest.mark.parametrize("url", AUDITOR_URLS + ["/auditor/deployments/1/"])
@pytest.mark.parametrize("username", ["engineer", "cab", "outsider"])
def test_people_who_are_not_auditors_are_refused(demo, client, url, username):
    client.force_login(getattr(demo, username))
    assert client.get(url).status_code == 403


@pytest.mark.parametrize("username", ["auditor", "admin"])
def test_auditors_and_administrators_see_every_page(demo, client, username):
    deployment = make_deployment(approved_production_change(demo))
    client.force_login(getattr(demo, username))
    for url in AUDITOR_URLS + [f"/auditor/deployments/{deployment.pk}/"]:
        assert client.get(url).status_code == 200, url


def test_events_whose_data_has_keys_named_like_dict_methods_show_as_data(demo, client):
    # A CAB agenda's event records {"items": [...]}: the page lists the key and its
    # value instead of failing on the dict's own items().
    record("cab.agenda_sent", after={"items": ["CR-7 payments 3.3.0"], "keys": 2},
           before={"values": "old"})
    client.force_login(demo.auditor)
    response = client.get("/audit/?action=cab.agenda_sent")
    assert response.status_code == 200
    page = response.content.decode()
    assert "items: [&#x27;CR-7 payments 3.3.0&#x27;]" in page and "keys: 2" in page
    assert "<dt>values</dt><dd>old</dd>" in page


def test_evidence_of_a_missing_deployment_is_a_404(demo, client):
    client.force_login(demo.auditor)
    assert client.get("/auditor/deployments/999999/").status_code == 404


# --- audit trail browser ------------------------------------------------------


def test_audit_browser_pages_by_keyset_newest_first(demo, client):
    client.force_login(demo.auditor)
    events = [record("bulk.thing", object_id=str(i)) for i in range(60)]
    first = client.get("/audit/?action=bulk.thing")
    rows = first.context["page"].rows
    assert [e.pk for e in rows] == [e.pk for e in reversed(events)][:50]
    assert f"before={rows[-1].pk}" in first.content.decode()
    second = client.get(f"/audit/?action=bulk.thing&before={rows[-1].pk}")
    assert [e.pk for e in second.context["page"].rows] == [e.pk for e in events[:10]][::-1]
    assert second.context["page"].next_before is None
    page = second.content.decode()
    assert 'href="?action=bulk.thing" rel="first"' in page and 'rel="next"' not in page
    # A position that is not ASCII digits (a superscript two is a digit to Python's
    # str.isdigit, not to int) shows the first page.
    for before in ("\u00b2", "-5", "1e3", "9" * 30):
        response = client.get("/audit/", {"action": "bulk.thing", "before": before})
        assert response.status_code == 200 and response.context["page"].newest


def test_audit_browser_filters_by_action_prefix_actor_object_and_time(demo, client):
    client.force_login(demo.auditor)
    change = request_change(demo.engineer, "staging")
    approval_services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")

    def actions(query):
        return [e.action for e in client.get(f"/audit/?{query}").context["page"].rows]

    assert actions("action=gate.") == ["gate.approved"]
    assert set(actions("actor=engineer")) == {"change.created", "change.risk_assessed",
                                              "change.submitted"}
    assert actions(f"object_type=changerequest&object_id={change.pk}&action=change.submitted"
                   ) == ["change.submitted"]


def test_audit_browser_filters_by_time(db, client, django_user_model):
    # Events are written in time order; the page turns times into id bounds.
    for days in (30, 20, 10):
        record(f"thing.{days}", days_ago=days)
    client.force_login(django_user_model.objects.create_superuser("root"))

    def actions(query):
        return [e.action for e in client.get(f"/audit/?{query}").context["page"].rows
                if e.action.startswith("thing.")]

    def day(days_ago):
        return (timezone.now() - timedelta(days=days_ago)).strftime("%Y-%m-%d")

    assert actions(f"since={day(25)}&until={day(15)}") == ["thing.20"]
    assert actions(f"since={day(15)}") == ["thing.10"]
    assert actions(f"until={day(15)}") == ["thing.20", "thing.30"]
    assert actions(f"since={day(5)}") == []


def test_audit_browser_shows_bad_filters_as_errors_not_a_crash(demo, client):
    client.force_login(demo.auditor)
    record()
    response = client.get("/audit/?since=yesterday-ish&before=abc")
    assert response.status_code == 400
    assert "Enter a valid date/time" in response.content.decode()
    assert len(response.context["page"].rows) >= 1  # the other filters still apply


def test_audit_browser_query_count_is_constant_as_events_grow(demo, client):
    client.force_login(demo.auditor)
    record()
    few = queries(client, "/audit/?actor=system")
    for i in range(80):
        record(object_id=str(i))
    assert queries(client, "/audit/?actor=system") == few
    assert queries(client, "/audit/") == queries(client, "/audit/?environment=staging") - 0


# --- exports ------------------------------------------------------------------


def body(response) -> str:
    return b"".join(response.streaming_content).decode()


def test_csv_export_streams_the_filtered_events_with_a_header(demo, client):
    client.force_login(demo.auditor)
    record("thing.one", reason="=HYPERLINK(\"http://evil\")")
    record("thing.two")
    response = client.get("/audit/export.csv?action=thing.")
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(body(response))))
    assert [r["action"] for r in rows] == ["thing.two", "thing.one"]
    assert rows[1]["reason"].startswith("'=HYPERLINK")  # not run as a formula


def test_jsonl_export_keeps_events_exactly_so_their_hashes_verify(demo, client):
    client.force_login(demo.auditor)
    request_change(demo.engineer, "staging")
    response = client.get("/audit/export.jsonl?actor=engineer")
    assert response["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in body(response).splitlines()]
    assert {row["action"] for row in lines} == {"change.created", "change.risk_assessed",
                                                "change.submitted"}
    for row in lines:
        stored = AuditEvent.objects.get(pk=row["id"])
        assert row["hash"] == stored.hash == compute_hash(stored)
        assert row["after"] == stored.after
        # Hashed again from the exported line alone, as an auditor's own tool would.
        rebuilt = AuditEvent(**{k: v for k, v in row.items() if k not in ("id", "hash")})
        rebuilt.occurred_at = datetime.fromisoformat(row["occurred_at"])
        assert compute_hash(rebuilt) == row["hash"]


def test_exports_are_themselves_audited(demo, client):
    client.force_login(demo.auditor)
    body(client.get("/audit/export.csv?environment=production"))
    event = AuditEvent.objects.get(action="audit.exported")
    assert event.actor_name == "auditor"
    assert event.after == {"format": "csv", "filters": {"environment": "production"}}


def test_export_with_a_bad_filter_is_a_400(demo, client):
    client.force_login(demo.auditor)
    response = client.get("/audit/export.jsonl?until=soon")
    assert response.status_code == 400
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


def tricky_events(count: int = 1) -> list[AuditEvent]:
    """Events whose every field stresses an export: formula characters, separators,
    quotes, line breaks, non-ASCII, every kind of JSON value, both IP families, and
    times with and without (milli/micro)seconds."""
    texts = ["=cmd|' /C calc'!A0", "-5", "+1", "@SUM(A1)", "\tTab", "\rCR", "a,b",
             'say "hi"', "line\nbreak", "back\\slash", "unicode \u00e9 \u65e5\u672c \U0001f389",
             "\x01ctrl \x7f", "'quoted", "", "plain"]
    jsons = [None, {}, {"status": "pending", "n": 1, "ok": True, "no": False, "x": None},
             {"b": 1, "a": 2, "aa": 3, "B": 0}, {"nested": {"z": 1, "a": [1, {"y": 2}]}},
             {"f": 0.25, "tiny": 1e-05}, {"s": "it's"}, {"s": "caf\u00e9"},
             {"q": 'say "hi"', "nl": "a\nb", "bs": "a\\b", "c": "x,y", "t": "\t"},
             ["list", 1], "=formula", 5, True, {"big": 12345678901234567890, "neg": -3},
             {"=k": "-v", "emoji": "\U0001f389"}, {"status": "pending"},
             {"a": 1, "bb": "x, y", "ccc": True}, {"a": "t: true"}, {"c": "x, y: z"},
             {"d": 'say "hi"'}]
    ips = [None, "10.0.0.1", "2001:db8::1"]
    micro = [0, 123456, 500, 999999]
    base = timezone.now().replace(microsecond=0) - timedelta(days=1)
    events = []
    for i in range(count):
        text = texts[i % len(texts)]
        events.append(AuditEvent(
            occurred_at=base + timedelta(seconds=i, microseconds=micro[i % len(micro)]),
            actor_name=texts[(i + 3) % len(texts)] or "someone", actor_kind="user",
            action="tricky.case", object_type="thing", object_id=str(i), object_repr=text,
            environment=["staging", "", "production"][i % 3],
            before=jsons[i % len(jsons)], after=jsons[(i * 7 + 3) % len(jsons)],
            reason=texts[(i + 5) % len(texts)], request_id=texts[(i + 7) % len(texts)][:64],
            ip=ips[i % len(ips)], user_agent=texts[(i + 11) % len(texts)],
            prev_hash="0" * 64, hash=f"{i:064x}"))
    return AuditEvent.objects.bulk_create(events)


def reference_csv(rows, cell) -> bytes:
    """What csv.writer writes for these rows with the view's own cell function."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(EXPORT_FIELDS)
    for row in rows:
        writer.writerow([cell(row[name]) for name in EXPORT_FIELDS])
    return out.getvalue().encode()


def test_csv_export_writes_exactly_what_the_cell_rules_say(demo, client):
    # PostgreSQL builds the lines; every value must come out as _csv_cell writes it.
    tricky_events(60)
    client.force_login(demo.auditor)
    got = b"".join(client.get("/audit/export.csv?action=tricky.case").streaming_content)
    rows = AuditEvent.objects.filter(action="tricky.case").order_by("-id").values(
        *EXPORT_FIELDS)
    assert got == reference_csv(rows, _csv_cell)
    parsed = list(csv.DictReader(io.StringIO(got.decode())))
    assert len(parsed) == 60 and parsed[0]["action"] == "tricky.case"


def test_jsonl_export_lines_hold_the_same_values_as_the_stored_events(demo, client):
    tricky_events(60)
    client.force_login(demo.auditor)
    got = b"".join(client.get("/audit/export.jsonl?action=tricky.case").streaming_content)
    lines = got.decode().split("\n")
    assert lines.pop() == ""
    rows = list(AuditEvent.objects.filter(action="tricky.case").order_by("-id")
                .values(*JSONL_FIELDS))
    assert len(lines) == len(rows) == 60
    for line, row in zip(lines, rows, strict=True):
        row["occurred_at"] = row["occurred_at"].isoformat()  # whole, as the hash covers it
        expected = json.dumps(row, cls=DjangoJSONEncoder, ensure_ascii=False)
        assert json.loads(line) == json.loads(expected)
        assert list(json.loads(line)) == JSONL_FIELDS
        if "tiny" not in expected:  # PostgreSQL writes 1e-05 as 0.00001: same number
            assert line == expected


def test_api_csv_writes_exactly_what_the_cell_rules_say(demo, api):
    tricky_events(45)
    got = b"".join(api(demo.auditor).get(
        "/api/v1/audit-events/?format=csv&action=tricky.case").streaming_content)
    events = AuditEvent.objects.filter(action="tricky.case").order_by("id")
    rows = [{name: getattr(e, name) for name in EXPORT_FIELDS} for e in events]
    assert got == reference_csv(rows, api_cell)


def test_api_csv_writes_structured_values_as_json(demo, api):
    # One row through PostgreSQL's fast path, one (nested) through the view's Python.
    record("thing.shaped", object_id="flat", after={"status": "pending", "n": 1, "ok": True})
    record("thing.shaped", object_id="nested", after={"a": [1, {"y": "x, y"}], "e": "\u00e9"})
    got = b"".join(api(demo.auditor).get(
        "/api/v1/audit-events/?format=csv&action=thing.shaped").streaming_content)
    rows = {r["object_id"]: r for r in csv.DictReader(io.StringIO(got.decode()))}
    assert json.loads(rows["flat"]["after"]) == {"status": "pending", "n": 1, "ok": True}
    assert json.loads(rows["nested"]["after"]) == {"a": [1, {"y": "x, y"}], "e": "\u00e9"}


def test_export_filters_with_quotes_and_wildcards_are_bound_not_spliced(demo, client, api):
    record("thing.odd", object_id="o'brien%_\\x")
    record("thing.odd", object_id="o'brienX")
    client.force_login(demo.auditor)
    csv_rows = list(csv.DictReader(io.StringIO(body(client.get(
        "/audit/export.csv?object_id=o'brien%25_%5Cx")))))
    assert [r["object_id"] for r in csv_rows] == ["o'brien%_\\x"]
    streamed = api(demo.auditor).get("/api/v1/audit-events/?format=csv&actor=system%25'--")
    assert streamed.status_code == 200
    assert b"".join(streamed.streaming_content).count(b"\r\n") == 1  # the header alone


def test_an_export_that_matches_nothing_is_the_header_alone(demo, client):
    client.force_login(demo.auditor)
    # An actor nobody is and a time range with no events: empty queries, no SQL error.
    assert body(client.get("/audit/export.csv?since=2999-01-01")) == ",".join(
        EXPORT_FIELDS) + "\r\n"
    assert body(client.get("/audit/export.jsonl?actor=nobody-at-all")) == ""


def test_an_export_abandoned_midway_leaves_the_connection_usable(demo, rf):
    from reporting.auditor_views import audit_export_jsonl

    tricky_events(1500)  # about 600 kB: PostgreSQL is still sending when the client leaves
    request = rf.get("/audit/export.jsonl")
    request.user = demo.auditor
    response = audit_export_jsonl(request)
    assert next(response.streaming_content).startswith(b'{"id": ')
    # The client hangs up and the server closes the response mid-COPY. (The signal that
    # would then close the connection is held back, to go on using it here.)
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                       " AND datname = current_database() AND query LIKE 'COPY (SELECT %%'")
        assert cursor.fetchone() == (0,)
    assert AuditEvent.objects.filter(action="tricky.case").count() == 1500
    request = rf.get("/audit/export.jsonl", {"action": "tricky.case"})
    request.user = demo.auditor
    assert len(b"".join(audit_export_jsonl(request).streaming_content).splitlines()) == 1500


# --- deployment history and evidence -------------------------------------------


def test_history_filters_by_environment_requester_approver_and_status(demo, client):
    client.force_login(demo.auditor)
    production = make_deployment(approved_production_change(demo))
    staging_change = request_change(demo.techlead, "staging")
    staging = make_deployment(staging_change, status="failed")

    def ids(query):
        page = client.get(f"/auditor/deployments/?{query}")
        assert page.status_code == 200
        return [row["deployment"].pk for row in page.context["rows"]]

    assert ids("") == [staging.pk, production.pk]
    assert ids("environment=production") == [production.pk]
    assert ids("requester=techlead") == [staging.pk]
    assert ids("approver=security") == [production.pk]
    assert ids("status=failed") == [staging.pk]
    assert ids(f"version={production.release.version}") == [production.pk]
    assert ids("since=2000-01-01&until=2000-01-02") == []


def test_history_pages_by_keyset(demo, client):
    client.force_login(demo.auditor)
    change = approved_production_change(demo)
    made = [make_deployment(change, steps=(), lines=0) for _ in range(55)]
    first = client.get("/auditor/deployments/")
    assert len(first.context["rows"]) == 50
    last = first.context["page"].next_before
    second = client.get(f"/auditor/deployments/?before={last}")
    assert [r["deployment"].pk for r in second.context["rows"]] == [d.pk for d in made[:5]][::-1]


def test_history_query_count_is_constant_as_deployments_grow(demo, client):
    client.force_login(demo.auditor)
    make_deployment(approved_production_change(demo))
    few = queries(client, "/auditor/deployments/")
    for _ in range(6):
        make_deployment(approved_production_change(demo))
    assert queries(client, "/auditor/deployments/") == few


def test_evidence_page_shows_request_approvals_checklist_log_and_trail(demo, client):
    change = approved_production_change(demo)
    deployment = make_deployment(change)
    client.force_login(demo.auditor)
    page = client.get(f"/auditor/deployments/{deployment.pk}/").content.decode()
    assert change.reference in page and "engineer" in page
    for approver in ("cab", "security", "business"):
        assert f"<td>{approver}</td>" in page
    assert "security ok" in page  # the approver's comment
    assert "Redeploy 1.0.0." in page
    assert f"line 2 of #{deployment.pk}" in page
    assert "gate.approved" in page and "change.submitted" in page
    assert "Every event below still matches its hash." in page


def test_evidence_page_flags_an_altered_event(demo, client):
    change = approved_production_change(demo)
    deployment = make_deployment(change)
    event = AuditEvent.objects.filter(action="gate.approved").first()
    with triggers_disabled():
        sql("UPDATE portal_auditevent SET actor_name = 'mallory' WHERE id = %s", [event.pk])
    client.force_login(demo.auditor)
    page = client.get(f"/auditor/deployments/{deployment.pk}/").content.decode()
    assert "no longer match their hash" in page
    assert "<strong>altered</strong>" in page


def test_evidence_query_count_is_constant_as_logs_and_events_grow(demo, client):
    client.force_login(demo.auditor)
    change = approved_production_change(demo)
    small = make_deployment(change, lines=1)
    big = make_deployment(change, lines=40)
    for _ in range(10):
        record("deployment.note", object_id=str(big.pk))
    assert queries(client, f"/auditor/deployments/{big.pk}/") == queries(
        client, f"/auditor/deployments/{small.pk}/")


# --- SOP 13.2 checklist -------------------------------------------------------


def statuses(deployment):
    return {i.key: i.status for i in compliance_for([deployment])[deployment.pk].items}


def test_compliance_of_an_approved_production_deployment(demo):
    deployment = make_deployment(approved_production_change(demo))
    assert statuses(deployment) == {
        "change_approval": "done", "security_review": "done", "backup": "done",
        "monitoring": "done", "rollback_tested": "not_recorded",
        "stakeholders": "not_recorded", "post_review": "not_recorded",
    }
    items = compliance_for([deployment])[deployment.pk].items
    assert "security gate approved by security" in items[1].evidence
    assert "cab" in items[0].evidence


def test_compliance_shows_what_is_missing(demo):
    # Nobody approved it and CI reported no security scan.
    change = request_change(demo.engineer, "production", release=ReleaseFactory(checks={}))
    deployment = make_deployment(change, step_status="failed")
    got = statuses(deployment)
    assert got["change_approval"] == "missing"
    assert got["backup"] == "missing" and got["monitoring"] == "missing"
    assert got["rollback_tested"] == "missing"  # no rollback plan written
    assert got["security_review"] == "not_recorded"


def test_a_security_scan_reported_by_ci_counts_as_security_review(demo):
    release = ReleaseFactory(checks={"security_scan": {"status": "passed",
                                                        "url": "https://ci/scan/1"}})
    change = request_change(demo.engineer, "staging", release=release)
    deployment = make_deployment(change)
    assert statuses(deployment)["security_review"] == "done"


# --- access review and sign-ins ---------------------------------------------------


def test_sign_ins_and_refused_sign_ins_are_audited_and_reviewed(demo, client):
    client.post("/login/", {"username": "cab", "password": "wrong"})
    client.post("/login/", {"username": "cab", "password": "wrong"})
    # cab approves in Production, so holds a second factor: the password is followed by
    # the authenticator code before the sign-in completes.
    client.post("/login/", {"username": "cab", "password": PASSWORD})
    assert not AuditEvent.objects.filter(action="auth.login").exists()
    assert client.post("/accounts/2fa/authenticate/",
                       {"code": totp_code()}).status_code == 302
    refused = AuditEvent.objects.filter(action="auth.login_failed")
    assert refused.count() == 2
    assert "wrong" not in json.dumps(list(refused.values("before", "after", "reason")))
    assert AuditEvent.objects.get(action="auth.login").actor_name == "cab"
    client.post("/logout/")
    assert AuditEvent.objects.filter(action="auth.logout", actor_name="cab").exists()

    client.force_login(demo.auditor)
    rows = {r.user.username: r for r in client.get("/auditor/access/").context["rows"]}
    assert (rows["cab"].logins, rows["cab"].failed_logins) == (1, 2)
    assert "approve_cab" in rows["cab"].environment_permissions["production"]
    assert rows["auditor"].auditor and not rows["engineer"].auditor
    assert rows["admin"].environment_permissions["production"] == ["all"]


def test_access_review_counts_the_last_90_days_of_sign_ins_from_daily_counts(demo, client):
    """The review reads per-day counts kept as the trail is written; they agree with the
    trail, a sign-in older than the window no longer counts, and recounting from the
    trail gives the same rows."""
    from audit.models import SignInDay
    from audit.trail import rebuild_sign_in_days
    from core import clock

    def sign_in_days_ago(days: int, user) -> None:
        then = timezone.now() - timedelta(days=days)
        with clock.use(lambda: then):
            client.force_login(user)
        client.logout()

    sign_in_days_ago(120, demo.cab)      # outside the 90 days
    sign_in_days_ago(30, demo.cab)
    sign_in_days_ago(30, demo.cab)
    sign_in_days_ago(2, demo.cab)
    for name in ("cab", "cab", "nobody-here"):
        client.post("/login/", {"username": name, "password": "wrong"})
    logins = AuditEvent.objects.filter(action="auth.login", actor_id=demo.cab.pk)
    assert logins.count() == 4
    assert SignInDay.objects.filter(actor_id=demo.cab.pk).count() == 3  # three days

    client.force_login(demo.auditor)
    rows = {r.user.username: r for r in client.get("/auditor/access/").context["rows"]}
    assert (rows["cab"].logins, rows["cab"].failed_logins) == (3, 2)
    assert rows["auditor"].logins == 1

    def table():
        return sorted(SignInDay.objects.values_list("day", "action", "actor_id", "name",
                                                    "count"))

    kept = table()
    assert ((timezone.now() - timedelta(days=120)).date(), "auth.login", demo.cab.pk, "",
            1) in kept
    assert any(row[1:] == ("auth.login_failed", 0, "nobody-here", 1) for row in kept)
    rebuild_sign_in_days()
    assert table() == kept


def test_access_review_query_count_is_constant_as_users_grow(demo, client):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    client.force_login(demo.auditor)
    few = queries(client, "/auditor/access/")
    group = Group.objects.get(name__icontains="cab")
    for i in range(8):
        get_user_model().objects.create_user(f"extra{i}").groups.add(group)
    assert queries(client, "/auditor/access/") == few


def test_the_history_page_links_each_deployment_to_its_evidence(demo, client):
    deployment = make_deployment(approved_production_change(demo))
    client.force_login(demo.auditor)
    page = client.get("/auditor/deployments/").content.decode()
    assert f'href="/auditor/deployments/{deployment.pk}/"' in page
    assert "SOP 13.2 4/7" in page
    assert Environment.objects.get(slug="production").name in page
