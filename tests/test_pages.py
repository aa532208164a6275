"""Server-rendered pages: what each role sees, form errors, and constant query counts."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from approvals import services
from catalog.models import Environment
from deployments.services import deployment_create
from tests.factories import ReleaseFactory, request_change


def listed(change, page: str) -> bool:
    """Whether ``page`` links to ``change`` (its reference alone is also a prefix of others)."""
    return f'href="/changes/{change.pk}/"' in page


def count_queries(client, url) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    return len(ctx.captured_queries)


def test_inbox_lists_the_gates_i_can_decide_and_not_my_own_changes(demo, client):
    theirs = request_change(demo.engineer, "staging")
    mine = request_change(demo.techlead, "staging")
    client.force_login(demo.techlead)
    page = client.get("/approvals/").content.decode()
    # The card of each gate (the other change may still be named as a conflict).
    assert f'<a href="/changes/{theirs.pk}/">{theirs.reference}</a>' in page
    assert f'<a href="/changes/{mine.pk}/">{mine.reference}</a>' not in page


def test_inbox_query_count_is_constant_as_changes_grow(demo, client):
    client.force_login(demo.techlead)
    request_change(demo.engineer, "staging")
    few = count_queries(client, "/approvals/")
    for _ in range(8):
        change = request_change(demo.engineer, "staging")
        services.gate_approve(actor=demo.qa, change=change, role="qa")
    many = count_queries(client, "/approvals/")
    assert many == few


def test_history_query_count_is_constant_as_deployments_grow(demo, client):
    client.force_login(demo.auditor)
    env = Environment.objects.get(slug="development")
    deployment_create(actor=demo.engineer, release=ReleaseFactory(), environment=env)
    few = count_queries(client, "/deployments/")
    from deployments.models import Deployment

    Deployment.objects.update(status="succeeded")
    for _ in range(8):
        deployment_create(actor=demo.engineer, release=ReleaseFactory(), environment=env)
        Deployment.objects.update(status="succeeded")
    many = count_queries(client, "/deployments/")
    assert many == few


def test_deployment_history_pages_newest_first(demo, client):
    from deployments.models import Deployment
    from deployments.views import HISTORY_PAGE_SIZE

    env = Environment.objects.get(slug="development")
    made = []
    for _ in range(HISTORY_PAGE_SIZE + 2):
        made.append(deployment_create(actor=demo.engineer, release=ReleaseFactory(),
                                      environment=env))
        Deployment.objects.update(status="succeeded")
    client.force_login(demo.auditor)
    first = client.get("/deployments/").content.decode()
    assert f'href="/deployments/{made[-1].pk}/"' in first
    assert f'href="/deployments/{made[1].pk}/"' not in first
    older = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    second = client.get("/deployments/" + older).content.decode()
    assert f'href="/deployments/{made[0].pk}/"' in second
    assert f'href="/deployments/{made[1].pk}/"' in second
    assert f'href="/deployments/{made[-1].pk}/"' not in second
    assert "Newest deployments" in second and 'rel="next"' not in second
    for before in ("abc", "-1", "9" * 40, "\u00b2"):
        assert f'href="/deployments/{made[-1].pk}/"' in client.get(
            "/deployments/", {"before": before}).content.decode()


def test_change_list_and_api_list_query_counts_are_constant(demo, client, api):
    client.force_login(demo.engineer)
    ci = api(demo.engineer)
    request_change(demo.engineer, "staging")

    def api_queries():
        with CaptureQueriesContext(connection) as ctx:
            assert ci.get("/api/v1/changes/").status_code == 200
        return len(ctx.captured_queries)

    few_page, few_api = count_queries(client, "/changes/"), api_queries()
    for _ in range(8):
        request_change(demo.engineer, "staging")
    assert count_queries(client, "/changes/") == few_page
    assert api_queries() == few_api


def test_change_list_filters_and_pages_without_counting_the_history(demo, client):
    from approvals.models import ChangeRequest
    from approvals.views import CHANGE_LIST_PAGE_SIZE

    staging = [request_change(demo.engineer, "staging") for _ in range(3)]
    ChangeRequest.objects.filter(pk=staging[0].pk).update(status="rejected")
    production = request_change(demo.engineer, "production", rollback_plan="Redeploy",
                                on_call=demo.oncall)
    client.force_login(demo.auditor)

    page = client.get("/changes/?environment=production").content.decode()
    assert listed(production, page) is True and listed(staging[1], page) is False
    page = client.get("/changes/?environment=staging&status=waiting").content.decode()
    assert listed(staging[1], page) is True and listed(staging[2], page) is True
    assert listed(staging[0], page) is False and listed(production, page) is False
    page = client.get("/changes/?status=rejected").content.decode()
    assert listed(staging[0], page) is True and listed(staging[1], page) is False
    assert "No changes match" in client.get("/changes/?application=nothing").content.decode()
    # A filter never widens what someone sees: an outsider lists none of these.
    client.force_login(demo.outsider)
    page = client.get("/changes/?environment=production&status=waiting").content.decode()
    assert listed(production, page) is False and "No changes match" in page
    client.force_login(demo.auditor)

    # Pages: newest first, then "Older changes" continues where the page ended.
    newest = [request_change(demo.engineer, "development") for _ in range(CHANGE_LIST_PAGE_SIZE)]
    first = client.get("/changes/").content.decode()
    assert all(listed(c, first) for c in newest)
    assert not any(listed(c, first) for c in [*staging, production])
    older = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    second = client.get("/changes/" + older).content.decode()
    assert all(listed(c, second) for c in [*staging, production])
    assert not any(listed(c, second) for c in newest)
    assert 'rel="next"' not in second and "Newest changes" in second
    assert count_queries(client, "/changes/" + older) == count_queries(client, "/changes/")
    # A malformed or out-of-range position is ignored, never an error.
    for before in ("abc", "-1", "9" * 40, "1.5", "\u00b2"):
        response = client.get("/changes/", {"before": before})
        assert response.status_code == 200 and listed(newest[-1], response.content.decode())


def test_audit_page_is_for_auditors_only(demo, client):
    request_change(demo.engineer, "staging")
    client.force_login(demo.engineer)
    assert client.get("/audit/").status_code == 403
    assert 'href="/audit/"' not in client.get("/").content.decode()

    client.force_login(demo.auditor)
    page = client.get("/audit/")
    assert page.status_code == 200
    assert "change.submitted" in page.content.decode()
    assert 'href="/audit/"' in client.get("/").content.decode()


def test_change_form_shows_errors_next_to_the_field_and_creates_nothing(demo, client):
    from approvals.models import ChangeRequest

    client.force_login(demo.engineer)
    response = client.post("/changes/new/", {"environment": "staging", "change_type": "standard",
                                             "strategy": "all_at_once"})
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="id_release_error"' in html
    assert ChangeRequest.objects.count() == 0


def test_change_form_refuses_an_environment_i_may_not_request(demo, client):
    client.force_login(demo.qa)
    release = ReleaseFactory()
    response = client.post("/changes/new/", {"release": release.pk, "environment": "production",
                                             "change_type": "standard",
                                             "strategy": "all_at_once"})
    assert response.status_code == 400
    assert "may not request changes to Production" in response.content.decode()


def test_engineer_requests_a_change_in_the_browser_and_lands_on_its_page(demo, client):
    client.force_login(demo.engineer)
    release = ReleaseFactory()
    response = client.post("/changes/new/", {"release": release.pk, "environment": "staging",
                                             "change_type": "standard",
                                             "strategy": "all_at_once",
                                             "rollback_plan": "Redeploy previous"},
                           follow=True)
    html = response.content.decode()
    assert "submitted for approval" in html
    assert "Tech lead approval pending (0 of 1)" in html


def test_outsider_sees_neither_changes_nor_deployments(demo, client):
    change = request_change(demo.engineer, "staging")
    client.force_login(demo.outsider)
    assert client.get(f"/changes/{change.pk}/").status_code == 404
    assert change.reference not in client.get("/changes/").content.decode()


def test_pages_need_login(db, client):
    for url in ("/", "/approvals/", "/changes/", "/deployments/", "/audit/"):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]


@pytest.mark.parametrize("url", ["/changes/999999/", "/deployments/999999/"])
def test_unknown_objects_are_404_pages(demo, client, url):
    client.force_login(demo.engineer)
    assert client.get(url).status_code == 404


def test_release_form_refuses_someone_who_may_not_request_changes(demo, client):
    from catalog.models import Release

    client.force_login(demo.outsider)
    response = client.post("/releases/new/", {"application": "storefront", "version": "9.9.9",
                                              "artifact_url": "https://evil.example/a.tgz"})
    assert response.status_code == 400
    assert "you may not register releases" in response.content.decode()
    assert not Release.objects.filter(version="9.9.9").exists()


def test_api_change_list_queries_stay_constant_with_production_readiness_checks(demo, api):
    ci = api(demo.engineer)

    def api_queries():
        with CaptureQueriesContext(connection) as ctx:
            assert ci.get("/api/v1/changes/").status_code == 200
        return len(ctx.captured_queries)

    request_change(demo.engineer, "production")
    few = api_queries()
    for _ in range(6):
        request_change(demo.engineer, "production")
    assert api_queries() == few


def test_inbox_says_what_else_a_change_waits_for_or_that_the_decision_is_the_last(demo, client):
    from approvals import services

    change = request_change(demo.engineer, "staging")
    client.force_login(demo.qa)
    page = client.get("/approvals/").content.decode()
    assert "Also waiting for:" in page and "Tech lead approval pending (0 of 1)" in page
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    page = client.get("/approvals/").content.decode()
    assert "Your decision is the last thing this change waits for." in page
