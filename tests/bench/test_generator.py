"""The benchmark's generator writes a trail and a deployment history the portal accepts:
a chain that verifies, and deployments the history pages show with their evidence."""

from datetime import timedelta

from django.utils import timezone

from audit.models import AuditEvent
from audit.trail import verify_chain
from bench.audit_bench import generate, generate_deployments
from deployments.models import Deployment
from reporting.audit_selectors import compliance_for


def test_generated_trail_chains_and_spans_two_years(db):
    generate(300)
    assert verify_chain().ok
    oldest = AuditEvent.objects.order_by("id").first().occurred_at
    assert timedelta(days=720) < timezone.now() - oldest < timedelta(days=730)
    # Appending continues the same chain.
    generate(20)
    assert verify_chain().ok
    assert AuditEvent.objects.filter(user_agent="bench").count() == 320


def test_generated_deployments_carry_what_the_history_pages_read(db, client,
                                                                 django_user_model):
    generate_deployments(30)
    deployments = list(Deployment.objects.select_related("release").order_by("id"))
    assert len(deployments) == 30
    assert [d.created_at for d in deployments] == sorted(d.created_at for d in deployments)
    assert all(d.application_id == d.release.application_id for d in deployments)
    statuses = {i.key: i.status for i in compliance_for(deployments[:1])[deployments[0].pk].items}
    assert statuses["change_approval"] == statuses["backup"] == statuses["monitoring"] == "done"
    client.force_login(django_user_model.objects.create_superuser("root"))
    assert client.get("/auditor/deployments/?requester=user005").status_code == 200
    page = client.get("/deployments/?environment=production")
    assert page.status_code == 200 and b"service-" in page.content
