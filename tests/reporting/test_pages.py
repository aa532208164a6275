"""The metrics page (SVG charts with bands) and the deployment dashboard."""

from __future__ import annotations

import re
from datetime import timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from catalog.models import Application, Environment
from deployments.models import Deployment
from tests.factories import ReleaseFactory, request_change
from tests.reporting.conftest import make_deployment


def recent_history(count: int = 3):
    """Deployments of storefront to production over the last weeks."""
    app = Application.objects.get(slug="storefront")
    env = Environment.objects.get(slug="production")
    now = timezone.now()
    made = []
    for i in range(count):
        finished = now - timedelta(days=3 * i + 1)
        made.append(make_deployment(app, env, version=f"5.{i}.{len(made)}",
                                    committed=finished - timedelta(hours=5), finished=finished,
                                    status="failed" if i % 3 == 2 else "succeeded",
                                    failed_step=i % 3 == 2))
    return made


def test_metrics_page_draws_five_charts_and_the_bands(client, demo):
    recent_history(4)
    client.force_login(demo.auditor)
    response = client.get("/metrics/")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count("<svg") == 5
    for key in ("frequency", "lead-time", "mttr", "failure-rate", "success-rate"):
        assert f'data-chart="{key}"' in html
    # Bars are drawn for the months with deployments, thresholds for the DORA bands.
    assert re.search(r'<rect class="seg seg-ok"[^>]*height="[1-9]', html)
    assert "elite &lt; 1 day" in html or "elite < 1 day" in html
    assert 'class="band band-elite"' in html  # lead time of 5 h
    assert "<script" not in html.split("</head>")[1]  # no scripts drawn into the page


def test_metrics_page_filters_and_refuses_nonsense_quietly(client, demo):
    client.force_login(demo.auditor)
    assert client.get("/metrics/?environment=staging&months=12").status_code == 200
    assert client.get("/metrics/?environment=moon").status_code == 400
    assert client.get("/metrics/?months=abc").status_code == 400


def test_metrics_page_needs_a_signed_in_user(client, demo):
    response = client.get("/metrics/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_metrics_page_keeps_its_query_count_as_deployments_grow(client, demo):
    client.force_login(demo.auditor)
    recent_history(2)
    with CaptureQueriesContext(connection) as first:
        client.get("/metrics/")
    recent_history(9)
    with CaptureQueriesContext(connection) as second:
        client.get("/metrics/")
    assert len(second) == len(first)


def test_dashboard_shows_versions_in_flight_and_who_is_awaited(client, demo):
    app = Application.objects.get(slug="storefront")
    production = Environment.objects.get(slug="production")
    staging = Environment.objects.get(slug="staging")
    now = timezone.now()
    make_deployment(app, production, version="3.1.0", committed=now - timedelta(days=2),
                    finished=now - timedelta(days=1))
    make_deployment(app, production, version="3.2.0", committed=now - timedelta(days=1),
                    finished=now - timedelta(hours=2), status="failed", failed_step=True)
    running = make_deployment(app, staging, version="3.3.0", committed=now,
                              finished=now, status="running")
    Deployment.objects.filter(pk=running.pk).update(finished_at=None, progress=40)
    change = request_change(demo.engineer, "production", release=ReleaseFactory(),
                            rollback_plan="Redeploy 3.1.0", on_call=demo.oncall)

    client.force_login(demo.auditor)
    html = client.get("/dashboard/").content.decode()
    assert 'hx-get="/dashboard/live"' in html and 'hx-trigger="every 3s"' in html
    row = html[html.index('data-application="storefront"'):]
    prod_cell = row[row.index('data-environment="production"'):]
    prod_cell = prod_cell[:prod_cell.index("</td>")]
    assert "3.1.0" in prod_cell  # still running there: 3.2.0 failed
    assert "3.2.0" in prod_cell and "Failed" in prod_cell
    assert change.reference in prod_cell
    # Production standard changes wait for CAB, security and business, named.
    assert "Change approval board" in prod_cell and "cab" in prod_cell
    assert "security" in prod_cell and "business" in prod_cell
    staging_cell = row[row.index('data-environment="staging"'):]
    assert f'data-deployment="{running.pk}"' in staging_cell[:staging_cell.index("</td>")]
    assert 'aria-valuenow="40"' in staging_cell


def test_dashboard_fragment_updates_when_a_deployment_finishes(client, demo):
    app = Application.objects.get(slug="storefront")
    env = Environment.objects.get(slug="production")
    now = timezone.now()
    running = make_deployment(app, env, version="4.0.0", committed=now, finished=now,
                              status="running")
    Deployment.objects.filter(pk=running.pk).update(finished_at=None)
    client.force_login(demo.auditor)
    live = client.get("/dashboard/live", HTTP_HX_REQUEST="true").content.decode()
    assert live.startswith('<section id="board"') and f'data-deployment="{running.pk}"' in live
    Deployment.objects.filter(pk=running.pk).update(status="succeeded", finished_at=now)
    live = client.get("/dashboard/live", HTTP_HX_REQUEST="true").content.decode()
    assert f'data-deployment="{running.pk}"' not in live
    assert 'class="version"' in live and "4.0.0" in live


def test_dashboard_hides_environments_the_user_may_not_see(client, demo):
    recent_history(2)
    client.force_login(demo.outsider)
    html = client.get("/dashboard/").content.decode()
    assert "5.0.0" not in html and "Nothing deployed or requested yet" in html


def test_dashboard_keeps_its_query_count_as_rows_grow(client, demo):
    client.force_login(demo.auditor)
    recent_history(2)
    request_change(demo.engineer, "staging")
    with CaptureQueriesContext(connection) as first:
        client.get("/dashboard/live")
    recent_history(6)
    other = Application.objects.create(slug="search", name="Search")
    make_deployment(other, Environment.objects.get(slug="staging"), version="0.1.0",
                    committed=timezone.now(), finished=timezone.now())
    for _ in range(3):
        request_change(demo.engineer, "production", rollback_plan="Redeploy", on_call=demo.oncall)
    with CaptureQueriesContext(connection) as second:
        client.get("/dashboard/live")
    assert len(second) == len(first)


def test_a_dashboard_cell_lists_the_oldest_waiting_changes_and_counts_the_rest(client, demo):
    from reporting.metrics_views import WAITING_PER_CELL

    made = [request_change(demo.engineer, "staging") for _ in range(WAITING_PER_CELL + 2)]
    client.force_login(demo.auditor)
    html = client.get("/dashboard/").content.decode()
    row = html[html.index('data-application="storefront"'):]
    cell = row[row.index('data-environment="staging"'):]
    cell = cell[:cell.index("</td>")]
    shown = [c for c in made if f'data-change="{c.pk}"' in cell]
    assert shown == made[:WAITING_PER_CELL]  # the oldest first
    assert "and 2 more waiting" in cell
    link = re.search(r'href="([^"]+)">and 2 more waiting', cell).group(1).replace("&amp;", "&")
    listed = client.get(link).content.decode()
    assert all(f'href="/changes/{c.pk}/"' in listed for c in made)
