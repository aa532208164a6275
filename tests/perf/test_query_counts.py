"""Pages and API lists cost the same number of queries with a short history and with a
long one: the property that keeps them fast at years of history (docs/benchmarks.md,
"Pages at scale and throughput"). The history grows through the benchmark's own
generator (bench/audit_bench.py), in small sizes."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from approvals.models import ChangeRequest
from bench.audit_bench import generate, generate_deployments, generate_open_changes
from deployments.models import Deployment

# (who, url) of every page and list that must not grow with history.
WORKFLOW_PAGES = ["/approvals/", "/approvals/?environment=production", "/changes/",
                  "/deployments/", "/dashboard/", "/dashboard/live", "/metrics/",
                  "/metrics/?environment=all&months=24", "/calendar/"]
AUDITOR_PAGES = ["/audit/", "/auditor/deployments/", "/auditor/access/",
                 "/audit/approval-quality/"]
API_LISTS = ["/api/v1/changes/", "/api/v1/deployments/", "/api/v1/audit-events/"]


def _history(deployments: int, open_changes: int, events: int) -> None:
    generate_deployments(deployments)
    generate_open_changes(open_changes)
    generate(events)


def _count(client, url: str, **headers) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, **headers)
    assert response.status_code == 200, (url, response.status_code)
    return len(ctx.captured_queries)


def _counts(client, urls: list[str], **headers) -> dict[str, int]:
    for url in urls:  # first views fill per-process caches (content types, sessions)
        client.get(url, **headers)
    return {url: _count(client, url, **headers) for url in urls}


@pytest.fixture
def history(demo):
    """Two releases per generated application and environment, a change waiting in
    each environment, a few audit events: the smallest history every page shows in full."""
    _history(deployments=75, open_changes=3, events=30)
    change = (ChangeRequest.objects.filter(environment__slug="production",
                                           release__application__slug="service-01")
              .order_by("id").first())
    deployment = Deployment.objects.get(change_id=change.pk)
    return change, deployment


def test_workflow_pages_cost_the_same_queries_with_more_history(demo, client, history):
    change, deployment = history
    client.force_login(demo.cab)
    pages = [*WORKFLOW_PAGES, f"/changes/{change.pk}/", f"/deployments/{deployment.pk}/"]
    few = _counts(client, pages)
    inbox_few = client.get("/approvals/").content.decode()
    assert 'rel="next"' not in inbox_few

    _history(deployments=300, open_changes=90, events=300)

    assert _counts(client, pages) == few
    # The inbox now has more gates than fit one page: it shows a page and the pager,
    # and the next page costs the same queries as the first.
    inbox = client.get("/approvals/").content.decode()
    assert 'rel="next"' in inbox and "Page 1 of" in inbox
    assert inbox.count('class="card inbox-item"') == 25
    assert _count(client, "/approvals/?page=2") == few["/approvals/"]
    # Rollback options list the earlier successful releases, read in a fixed number
    # of queries however many there are.
    page = client.get(f"/changes/{change.pk}/").content.decode()
    assert "no irreversible migration since" in page


def test_auditor_pages_and_api_lists_cost_the_same_queries_with_more_history(
        demo, client, api, history):
    _, deployment = history
    client.force_login(demo.auditor)
    pages = [*AUDITOR_PAGES, f"/auditor/deployments/{deployment.pk}/"]
    reader = api(demo.auditor)
    few_pages = _counts(client, pages)
    few_api = _counts(reader, API_LISTS)

    _history(deployments=300, open_changes=30, events=600)

    assert _counts(client, pages) == few_pages
    assert _counts(reader, API_LISTS) == few_api
