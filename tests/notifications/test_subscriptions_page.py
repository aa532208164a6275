"""The subscriptions page and who may subscribe to what."""

import pytest

from core.errors import Refused
from notifications import services
from notifications.models import Subscription


def test_a_person_subscribes_themselves_to_an_environment_they_work_in(demo, client):
    client.force_login(demo.qa)
    response = client.post("/notifications/", {"environment": "staging", "channel": "email",
                                                "target": "", "kinds": ["post_deployment"]},
                           follow=True)
    assert "Subscribed." in response.content.decode()
    subscription = Subscription.objects.get()
    assert (subscription.user, subscription.environment.slug, subscription.kinds) == (
        demo.qa, "staging", ["post_deployment"])
    assert "Post-deployment summary" in response.content.decode()


def test_nobody_hears_about_an_environment_they_may_not_see(demo, client):
    outsider = demo.outsider
    outsider.email = "outsider@example.com"
    outsider.save()
    client.force_login(outsider)
    response = client.post("/notifications/", {"environment": "production",
                                                "channel": "email", "target": ""})
    assert response.status_code == 400
    assert "you may not subscribe yourself to Production" in response.content.decode()
    assert not Subscription.objects.exists()


def test_team_channels_need_deploy_or_rollback_and_all_environments_need_an_admin(demo):
    from catalog.models import Environment

    with pytest.raises(Refused):
        services.subscription_create(actor=demo.engineer, channel="slack",
                                     target="https://hooks.example.com/x", environment=None)

    production = Environment.objects.get(slug="production")
    with pytest.raises(Refused):
        services.subscription_create(actor=demo.engineer, channel="slack",
                                     target="https://hooks.example.com/x",
                                     environment=production)
    services.subscription_create(actor=demo.oncall, channel="slack",
                                 target="https://hooks.example.com/x", environment=production)
    assert Subscription.objects.count() == 1


def test_only_the_creator_removes_a_subscription(demo, client):
    from catalog.models import Environment

    subscription = services.subscription_create(
        actor=demo.oncall, channel="webhook", target="https://hooks.example.com/ops",
        environment=Environment.objects.get(slug="production"))
    client.force_login(demo.engineer)
    client.post("/notifications/", {"delete": str(subscription.pk)})
    assert Subscription.objects.filter(pk=subscription.pk).exists()
    client.force_login(demo.oncall)
    client.post("/notifications/", {"delete": str(subscription.pk)})
    assert not Subscription.objects.filter(pk=subscription.pk).exists()


def test_webhook_urls_stay_out_of_the_audit_trail_and_the_pages(demo, client):
    from audit.models import AuditEvent
    from catalog.models import Environment

    url = "https://hooks.example.com/services/T000/B000/very-secret-token"
    services.subscription_create(actor=demo.oncall, channel="slack", target=url,
                                 environment=Environment.objects.get(slug="production"))
    event = AuditEvent.objects.get(action="subscription.created")
    assert "very-secret-token" not in str(event.after)
    assert event.after["target"].startswith("https://hooks.example.com/")
    client.force_login(demo.oncall)
    page = client.get("/notifications/").content.decode()
    assert "very-secret-token" not in page and "hooks.example.com" in page


def test_someone_who_lost_access_stops_hearing_about_the_environment(demo):
    from catalog.models import Environment
    from notifications.services import subscriptions_for

    staging = Environment.objects.get(slug="staging")
    qa = demo.qa
    qa.email = "qa@example.com"
    qa.save()
    services.subscription_create(actor=qa, channel="email", environment=staging, user=qa)
    assert len(subscriptions_for("post_deployment", 1, staging.pk)) == 1
    qa.groups.clear()
    assert subscriptions_for("post_deployment", 1, staging.pk) == []
