"""A request reads a person's permissions once; a grant, a revocation or a group change
during that request is seen at once, and nothing carries over to the next request."""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test.utils import CaptureQueriesContext
from guardian.models import UserObjectPermission
from guardian.shortcuts import assign_perm, remove_perm

from catalog.models import Environment
from catalog.permissions import environment_permissions, has_env_perm
from core import context


@contextmanager
def in_a_request(user):
    """Inside: a request context bound as RequestContextMiddleware binds it."""
    request = SimpleNamespace(user=user)
    token = context.bind_request(context.RequestContext(request_id="t", request=request))
    try:
        yield
    finally:
        context.unbind_request(token)


def test_one_read_per_request_and_changes_during_it_are_seen(demo):
    production = Environment.objects.get(slug="production")
    outsider = demo.outsider
    with in_a_request(outsider):
        assert not has_env_perm(outsider, "deploy", production)
        with CaptureQueriesContext(connection) as ctx:
            for _ in range(5):
                has_env_perm(outsider, "deploy", production)
                environment_permissions(outsider)
        assert len(ctx.captured_queries) == 0  # already read in this request

        assign_perm("catalog.deploy", outsider, production)
        assert has_env_perm(outsider, "deploy", production)
        remove_perm("catalog.deploy", outsider, production)
        assert not has_env_perm(outsider, "deploy", production)

        deployers = Group.objects.create(name="production deployers")
        assign_perm("catalog.deploy", deployers, production)
        assert not has_env_perm(outsider, "deploy", production)
        outsider.groups.add(deployers)
        assert has_env_perm(outsider, "deploy", production)
        outsider.groups.remove(deployers)
        assert not has_env_perm(outsider, "deploy", production)

        # What a caller does with its answer does not change the next answer.
        environment_permissions(outsider).setdefault(production.pk, set()).add("deploy")
        assert not has_env_perm(outsider, "deploy", production)


def test_the_next_request_reads_afresh(demo):
    production = Environment.objects.get(slug="production")
    outsider = demo.outsider
    with in_a_request(outsider):
        assert not has_env_perm(outsider, "deploy", production)
    # A grant written by a path that sends no signal (a bulk insert).
    UserObjectPermission.objects.bulk_create([UserObjectPermission(
        user=outsider, object_pk=str(production.pk),
        content_type=ContentType.objects.get_for_model(Environment),
        permission=Permission.objects.get(codename="deploy",
                                          content_type__app_label="catalog"))])
    with in_a_request(outsider):
        assert has_env_perm(outsider, "deploy", production)


def test_inactive_people_hold_nothing_and_superusers_everything(demo):
    production = Environment.objects.get(slug="production")
    cab = demo.cab
    assert has_env_perm(cab, "approve_cab", production)
    cab.is_active = False
    assert not has_env_perm(cab, "approve_cab", production)
    assert demo.admin.is_superuser and has_env_perm(demo.admin, "deploy", production)
