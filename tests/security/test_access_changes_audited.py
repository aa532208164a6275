"""Every change of who may do what is audited, wherever it is made: the Django admin,
django-guardian's object-permission pages, or code; approval state is read-only there."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.utils import timezone
from guardian.shortcuts import assign_perm, get_perms, remove_perm

from approvals.models import (
    ApprovalPolicy,
    ChangeRequest,
    Delegation,
    Freeze,
    MaintenanceWindow,
)
from audit.access import OUTSIDE_A_REQUEST
from audit.models import AuditEvent
from audit.trail import System
from catalog.models import Application, Environment, Release
from identity.models import ApiToken
from identity.services import api_token_issue
from tests.conftest import PASSWORD
from tests.factories import request_change

User = get_user_model()


@pytest.fixture(autouse=True)
def _from_here(request):
    """Events are counted from the start of the test, after the demo data's own."""
    if "demo" in request.fixturenames:
        request.getfixturevalue("demo")
    last = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()
    _SINCE["id"] = last or 0


_SINCE = {"id": 0}


@pytest.fixture
def admin_client(demo) -> Client:
    client = Client()
    assert client.login(username="admin", password=PASSWORD)
    return client


def form_data(form) -> dict:
    """What the browser would post back for ``form`` unchanged."""
    data = {}
    for name, field in form.fields.items():
        if field.disabled:
            continue
        key = form.add_prefix(name)
        value = form[name].value()
        widget = field.widget
        if isinstance(widget, forms.MultiWidget):
            parts = value if isinstance(value, list) else widget.decompress(value)
            for i, (sub, part) in enumerate(zip(widget.widgets, parts, strict=False)):
                data[f"{key}_{i}"] = sub.format_value(part) or ""
        elif isinstance(widget, forms.CheckboxInput):
            if value:
                data[key] = "on"
        else:
            prepared = field.prepare_value(value)
            if isinstance(prepared, list | tuple):
                data[key] = [str(v) for v in prepared]
            else:
                data[key] = "" if prepared is None else str(prepared)
    return data


def change_page(client, url) -> dict:
    """The admin change form at ``url`` as post data, inlines included."""
    page = client.get(url)
    assert page.status_code == 200
    data = form_data(page.context["adminform"].form)
    for inline in page.context["inline_admin_formsets"]:
        formset = inline.formset
        data.update(form_data(formset.management_form))
        for form in formset.forms:
            data.update(form_data(form))
    return data


def events(action: str, **filters):
    return AuditEvent.objects.filter(action=action, id__gt=_SINCE["id"],
                                     **filters).order_by("id")


def everything_recorded() -> str:
    return json.dumps(list(AuditEvent.objects.values("before", "after", "reason")))


# --- the admin ----------------------------------------------------------------------------


def test_policy_rows_are_read_only_in_the_admin_and_say_where_they_change(admin_client, demo):
    # Policies, gates, windows and freezes are compiled from the policy document
    # (docs/policies.md): a new version changes them, never an edit here.
    policy = ApprovalPolicy.objects.get(environment__slug="production", change_type="standard")
    window = MaintenanceWindow.objects.filter(environment__slug="production").first()
    production = Environment.objects.get(slug="production")
    rows = lambda: (list(ApprovalPolicy.objects.values().order_by("pk")),  # noqa: E731
                    list(MaintenanceWindow.objects.values().order_by("pk")),
                    list(Freeze.objects.values().order_by("pk")))
    before = rows()

    page = admin_client.get(f"/admin/approvals/approvalpolicy/{policy.pk}/change/")
    assert page.status_code == 200
    assert "compiled from the policy document" in page.content.decode()
    assert 'href="/policies/"' in page.content.decode()
    listing = admin_client.get("/admin/approvals/maintenancewindow/")
    assert listing.status_code == 200 and 'href="/policies/"' in listing.content.decode()

    refused = [
        (f"/admin/approvals/approvalpolicy/{policy.pk}/change/", {"requires_window": ""}),
        ("/admin/approvals/approvalpolicy/add/", {"environment": production.pk,
                                                  "change_type": "hotfix"}),
        (f"/admin/approvals/approvalpolicy/{policy.pk}/delete/", {"post": "yes"}),
        (f"/admin/approvals/maintenancewindow/{window.pk}/change/", {"end_time": "03:30:00"}),
        ("/admin/approvals/maintenancewindow/add/", {
            "environment": production.pk, "weekday": 5, "start_time": "06:00:00",
            "end_time": "07:00:00", "timezone": "UTC"}),
        (f"/admin/approvals/maintenancewindow/{window.pk}/delete/", {"post": "yes"}),
        ("/admin/approvals/freeze/add/", {
            "environment": production.pk, "reason": "mine", "starts_at_0": "2027-01-01",
            "starts_at_1": "00:00:00", "ends_at_0": "2027-01-02", "ends_at_1": "00:00:00"}),
    ]
    for url, data in refused:
        assert admin_client.post(url, data).status_code == 403, url
    assert rows() == before
    assert not AuditEvent.objects.filter(action__endswith="_in_admin",
                                         object_type__in=["approvalpolicy",
                                                          "maintenancewindow",
                                                          "freeze"]).exists()


def test_environment_and_executor_settings_edited_in_the_admin_are_audited_without_secrets(
        admin_client, demo):
    staging = Environment.objects.get(slug="staging")
    url = f"/admin/catalog/environment/{staging.pk}/change/"
    data = change_page(admin_client, url)
    data["supersede_queued"] = "on"
    assert admin_client.post(url, data).status_code == 302
    changed = events("environment.changed_in_admin").get()
    assert (changed.before["supersede_queued"], changed.after["supersede_queued"]) == (
        False, True)

    app = Application.objects.get(slug="storefront")
    url = f"/admin/catalog/application/{app.pk}/change/"
    data = change_page(admin_client, url)
    data["executor"] = "webhook"
    data["executor_settings"] = json.dumps({"url": "https://deploy.example/run",
                                            "password": "hunter2-never-logged"})
    answer = admin_client.post(url, data)
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    event = events("application.changed_in_admin").get()
    assert event.after["executor"] == "webhook"
    assert event.after["executor_settings"] == {"url": "https://deploy.example/run",
                                                "password": "[redacted]"}
    assert "hunter2-never-logged" not in everything_recorded()


def test_a_users_groups_and_flags_changed_in_the_admin_are_audited_without_the_password(
        admin_client, demo):
    qa = demo.qa
    url = f"/admin/auth/user/{qa.pk}/change/"
    data = change_page(admin_client, url)
    cab = Group.objects.get(name="cab")
    data["groups"] = [*data.get("groups", []), str(cab.pk)]
    data["is_staff"] = "on"
    answer = admin_client.post(url, data)
    assert answer.status_code == 302, answer.context["adminform"].form.errors

    event = events("access.group_membership_changed", object_id=str(qa.pk)).get()
    assert event.actor_name == "admin"
    assert "cab" not in event.before["groups"] and "cab" in event.after["groups"]
    flags = events("access.account_flags_changed", object_id=str(qa.pk)).get()
    assert (flags.before, flags.after) == ({"is_staff": False}, {"is_staff": True})
    qa.refresh_from_db()
    assert qa.password.split("$")[-1] not in everything_recorded()


def test_an_object_permission_granted_on_guardians_admin_page_is_audited(admin_client, demo):
    production = Environment.objects.get(slug="production")
    qa_group = Group.objects.get(name="qa")
    url = (f"/admin/catalog/environment/{production.pk}/permissions/"
           f"group-manage/{qa_group.pk}/")
    held = get_perms(qa_group, production)
    assert "rollback" not in held and "deploy" not in held
    answer = admin_client.post(url, {"permissions": [*held, "rollback", "deploy"]})
    assert answer.status_code == 302
    assert {"rollback", "deploy"} <= set(get_perms(qa_group, production))

    granted = list(events("access.object_permission_granted"))
    assert sorted(e.after["permission"] for e in granted) == ["catalog.deploy",
                                                              "catalog.rollback"]
    event = granted[0]
    assert event.actor_name == "admin" and event.environment == "production"
    assert event.before == {**event.after, "granted": False}
    assert event.after["group"] == "qa" and event.after["object"] == str(production)

    assert admin_client.post(url, {"permissions": [*held, "deploy"]}).status_code == 302
    assert "rollback" not in get_perms(qa_group, production)
    revoked = events("access.object_permission_revoked").get()
    assert revoked.after["permission"] == "catalog.rollback"
    assert revoked.after["granted"] is False and revoked.actor_name == "admin"


def test_assign_perm_and_remove_perm_from_code_are_audited_with_a_system_reason(demo):
    production = Environment.objects.get(slug="production")
    assign_perm("catalog.deploy", demo.outsider, production)
    granted = events("access.object_permission_granted",
                     object_id=f"environment:{production.pk}").last()
    assert granted.actor_kind == "system" and granted.reason == OUTSIDE_A_REQUEST
    assert granted.after["user"] == "outsider" and granted.after["granted"] is True

    remove_perm("catalog.deploy", demo.outsider, production)
    revoked = events("access.object_permission_revoked").get()
    assert revoked.after["user"] == "outsider" and revoked.before["granted"] is True


def test_group_and_permission_changes_in_code_are_audited_on_every_road(demo):
    engineer = demo.engineer
    cab = Group.objects.get(name="cab")
    engineer.groups.add(cab)
    cab.user_set.remove(engineer)  # the reverse road
    engineer.groups.clear()
    memberships = list(events("access.group_membership_changed", object_id=str(engineer.pk)))
    assert [("cab" in e.before["groups"], "cab" in e.after["groups"])
            for e in memberships] == [(False, True), (True, False), (False, False)]
    assert memberships[-1].before["groups"] and memberships[-1].after["groups"] == []

    audit = Permission.objects.get(codename="view_audit_trail")
    cab.permissions.add(audit)
    engineer.user_permissions.add(audit)
    assert events("access.group_permissions_changed").get().after["permissions"] == [
        "audit.view_audit_trail"]
    assert events("access.user_permissions_changed").get().object_repr == "engineer"

    engineer.is_superuser = True
    engineer.save()
    flags = events("access.account_flags_changed", object_id=str(engineer.pk)).get()
    assert flags.after == {"is_superuser": True}


# --- read-only admins ---------------------------------------------------------------------


def test_read_only_admins_refuse_edits_and_nothing_changes(admin_client, demo):
    change = request_change(demo.engineer, "staging")
    status = change.status
    url = f"/admin/approvals/changerequest/{change.pk}/change/"
    assert admin_client.post(url, {"status": "approved"}).status_code == 403
    assert admin_client.post(f"/admin/approvals/changerequest/{change.pk}/delete/",
                             {"post": "yes"}).status_code == 403
    assert ChangeRequest.objects.get(pk=change.pk).status == status

    delegation = Delegation.objects.create(
        delegator=demo.cab, delegate=demo.cab2,
        environment=Environment.objects.get(slug="production"), role="cab",
        expires_at=timezone.now() + timedelta(days=1))
    assert admin_client.post(f"/admin/approvals/delegation/{delegation.pk}/delete/",
                             {"post": "yes"}).status_code == 403
    assert Delegation.objects.filter(pk=delegation.pk).exists()

    token, _ = api_token_issue(actor=System("test"), user=demo.engineer, name="laptop",
                               scopes=["read"])
    answer = admin_client.post(f"/admin/identity/apitoken/{token.pk}/change/",
                               {"name": "laptop", "scopes": '["read", "deploy"]'})
    assert answer.status_code == 403
    assert ApiToken.objects.get(pk=token.pk).scopes == ["read"]


def test_the_admin_cannot_add_a_release_or_a_deployment_around_the_controls(admin_client,
                                                                            demo):
    from deployments.models import Deployment

    app = Application.objects.get(slug="storefront")
    production = Environment.objects.get(slug="production")
    releases, deployments = Release.objects.count(), Deployment.objects.count()
    # An untrusted artifact without a digest, and a deployment no gate ever saw.
    answer = admin_client.post("/admin/catalog/release/add/", {
        "application": app.pk, "version": "6.6.6",
        "artifact_url": "http://169.254.169.254/evil.tar.gz"})
    assert answer.status_code == 403
    release = Release.objects.filter(application=app).first()
    answer = admin_client.post("/admin/deployments/deployment/add/", {
        "application": app.pk, "environment": production.pk, "release": release.pk,
        "status": "queued", "kind": "deploy", "strategy": "all_at_once"})
    assert answer.status_code == 403
    assert (Release.objects.count(), Deployment.objects.count()) == (releases, deployments)


def test_notification_admin_is_a_read_only_view_without_webhook_urls(admin_client, demo):
    from notifications.models import Subscription
    from notifications.services import subscription_create

    secret_url = "https://hooks.example.com/services/T0/B0/s3cr3t-path"
    subscription = subscription_create(actor=demo.oncall, channel="webhook", target=secret_url,
                                       environment=Environment.objects.get(slug="production"))
    # No road around the service's address check and audit: no adding, editing or deleting.
    answer = admin_client.post("/admin/notifications/subscription/add/", {
        "channel": "webhook", "target": "http://169.254.169.254/latest/", "kinds": "[]",
        "active": "on"})
    assert answer.status_code == 403
    answer = admin_client.post(
        f"/admin/notifications/subscription/{subscription.pk}/change/",
        {"channel": "webhook", "target": "http://169.254.169.254/latest/", "kinds": "[]"})
    assert answer.status_code == 403
    assert Subscription.objects.get(pk=subscription.pk).target == secret_url
    # The URL works as a secret: the admin shows scheme, host and a hash only.
    for url in ("/admin/notifications/subscription/",
                f"/admin/notifications/subscription/{subscription.pk}/change/"):
        page = admin_client.get(url)
        assert page.status_code == 200
        assert "hooks.example.com" in page.content.decode()
        assert "s3cr3t-path" not in page.content.decode()


def test_a_token_revoked_from_the_admin_goes_through_the_audited_service(admin_client, demo):
    token, raw = api_token_issue(actor=System("test"), user=demo.engineer, name="ci-laptop")
    answer = admin_client.post("/admin/identity/apitoken/", {
        "action": "revoke", "_selected_action": [token.pk]})
    assert answer.status_code == 302
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
    event = events("token.revoked", object_id=str(token.pk)).get()
    assert event.actor_name == "admin"
    recorded = everything_recorded()
    assert raw not in recorded and token.token_hash not in recorded


def test_deleting_an_account_or_a_group_records_the_access_it_held(demo):
    outsider = demo.outsider
    cab = Group.objects.get(name="cab")
    outsider.groups.add(cab)
    outsider_id = outsider.pk
    outsider.delete()
    gone = events("access.account_deleted").get()
    assert gone.object_id == str(outsider_id) and gone.before["groups"] == ["cab"]

    members = sorted(cab.user_set.values_list("username", flat=True))
    cab.delete()
    deleted = events("access.group_deleted").get()
    assert deleted.before["members"] == members and deleted.object_repr == "cab"
    # Its object permissions went with it, each on the record.
    assert events("access.object_permission_revoked").filter(
        after__group="cab").exists()


def test_the_admin_cannot_unlock_an_environment_or_make_production_ordinary(admin_client,
                                                                            demo):
    production = Environment.objects.get(slug="production")
    Environment.objects.filter(pk=production.pk).update(locked=True, lock_reason="incident")
    # The change form posted without the lock box and the Production flag ticked and
    # with the reason emptied: the form saves, the lock and the flag stay.
    url = f"/admin/catalog/environment/{production.pk}/change/"
    data = change_page(admin_client, url)
    data.pop("locked", None)
    data.pop("production", None)
    data["lock_reason"] = ""
    assert admin_client.post(url, data).status_code == 302
    production.refresh_from_db()
    assert production.locked and production.lock_reason == "incident"
    assert production.production
