"""Every route refuses whom it must (STYLE 14; NetBox's generic API test cases).

The URL conf is walked (``get_resolver()``, through its includes): every route the
portal serves has a row in ``ROUTES`` below, which says who may use it; a route with no
row fails ``test_every_route_has_a_row``, so no endpoint ships without its refusals
stated. Each row is then asked, with each method its view allows, anonymously and as
every person of the demo cast (signed in once per test and reused):

- anonymous: 401 from the API, a redirect to sign-in from a page (or the answer a
  public route documents: health probes, sign-in, the schema, signed hooks);
- someone the row does not name: 403, or 404 where the object is in an environment
  they hold no permission on (or a page's redirect back with the refusal as a message);
  a state-changing request then changes nothing: no row of the portal's tables moves,
  and the only audit events written are the record of the refusal itself;
- someone the row names: not refused for want of permission (a refusal for want of a
  second factor, a 409 for the object's state or a 400 for the body are answers too;
  their request runs in a savepoint rolled back after it, so the next person meets the
  same objects);
- nobody, ever, a 500.

People sign in with ``force_login``, without a second factor. The matrix's objects are
in staging, where no second factor is asked; ``PRODUCTION`` asks Production's decisions
(approve, reject, roll back, retry a step, mark it done) on Production's objects, where
whoever holds the permission is refused for want of a second factor
(``step_up_required`` from the API, the second-factor check from a page), a documented
answer, and nothing changes either. ``PORTAL_TASK_DISPATCH = "hold"``: nothing posted here reaches a
worker.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, get_resolver
from django.utils import timezone

from catalog.models import Application, Environment
from deployments.models import Deployment, DeploymentStep
from tests.api.helpers import finished_deployment
from tests.factories import ReleaseFactory, request_change
from tests.security.refusal_matrix import (
    ANONYMOUS,
    CAST,
    EVERYONE,
    NOBODY,
    Row,
    api,
    check_route,
    page,
    public,
    view_methods,
    walk,
)

# Who holds a permission in staging, where the matrix's objects are (seed_demo):
# business holds permissions in Production only, cab and security none in staging
# either, and the outsider none anywhere: staging's changes and deployments are 404 to
# them.
SEES_STAGING = frozenset({"engineer", "techlead", "qa", "oncall", "auditor", "admin"})
REQUESTS_STAGING = frozenset({"engineer", "techlead", "oncall", "admin"})
DEPLOYS_STAGING = frozenset({"engineer", "oncall", "admin"})
ON_CALL = frozenset({"oncall", "admin"})
REQUESTER = frozenset({"engineer", "oncall", "admin"})  # the requester, or who may request
# The release registered for storefront is visible where storefront has targets.
SEES_STOREFRONT = EVERYONE - {"outsider"}
AUDITORS = frozenset({"auditor", "admin"})
STAFF = frozenset({"admin"})

# The includes of other projects: each answers for its own views; the matrix checks
# every one of their routes without parameters, anonymously and as someone without
# rights there, for the answer written here (and never a 500).
INCLUDED = {
    "admin/": "staff only: everyone else is sent to the admin's sign-in",
    "accounts/": "django-allauth's sign-in, sign-up refusal, second-factor and passkey "
                 "pages: public or signed-in, never a 500",
}


CHANGE = {"pk": "change"}
DEPLOYMENT = {"pk": "deployment"}
ATTENTION = {"pk": "attention"}
# A page that refuses a state change for want of permission answers 403/404, or
# redirects back to the object with the refusal as a message; a form page shows the
# form again with the refusal (200, or 400 where the page says so).
PAGE_REFUSED = (302, 403, 404)
FORM_REFUSED = (200, 400, 403, 404)
# Hooks open with their signature or a bearer token; a session is no credential there.
HOOK_REFUSED = (401,)
ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
APPROVERS_OF_STAGING = frozenset({"techlead", "qa", "admin"})
TICKS_CHECKLIST = frozenset({"engineer", "techlead", "qa", "oncall", "admin"})
CHANGE_BODY = {"release": "release", "environment": "staging", "change_type": "standard",
               "strategy": "all_at_once", "rollback_plan": "Redeploy the last release"}

CAB_MEMBERS = frozenset({"cab", "admin"})
BACKTESTERS = frozenset({"techlead", "cab", "security", "auditor", "admin"})
CHAIR = frozenset({"cab"})
MEETING = {"pk": "meeting"}
MEETING_ITEM = {"pk": "meeting", "item_id": "meeting_item"}

ROUTES: dict[str, Row] = {
    # --- API (api/v1/) ------------------------------------------------------------------
    "api-environments": api(),
    "api-applications": api(),
    "api-releases": api(("GET", "POST"), may={"GET": EVERYONE, "POST": REQUESTS_STAGING},
                        body={"application": "storefront", "version": "9.9.9"}),
    "api-release": api(args={"pk": "release"}, may=SEES_STOREFRONT),
    "api-changes": api(("GET", "POST"), may={"GET": EVERYONE, "POST": REQUESTS_STAGING},
                       body={"release": "release", "environment": "staging"}),
    "api-change": api(args=CHANGE, may=SEES_STAGING),
    "api-change-approve": api(("POST",), may=APPROVERS_OF_STAGING, args=CHANGE,
                              body={"gate": "qa"}),
    "api-change-reject": api(("POST",), may=APPROVERS_OF_STAGING, args=CHANGE,
                             body={"gate": "qa", "comment": "no"}),
    "api-change-checklist-item": api(("POST",), may=TICKS_CHECKLIST,
                                     args={"pk": "change", "item_id": "item"},
                                     body={"done": True}),
    # A draft is submitted by its requester only.
    "api-change-submit": api(("POST",), may=frozenset({"engineer"}), args={"pk": "draft"}),
    "api-change-deploy": api(("POST",), may=DEPLOYS_STAGING, args=CHANGE),
    "api-change-cancel": api(("POST",), may=REQUESTER, args=CHANGE),
    "api-cab-meetings": api(),
    "api-cab-meeting": api(args=MEETING, may=CAB_MEMBERS),
    "api-preflight": api(url="/api/v1/preflight/?release={release}&environment=staging",
                         may=SEES_STAGING),
    "api-deployments": api(),
    "api-deployment": api(args=DEPLOYMENT, may=SEES_STAGING),
    "api-deployment-log": api(args=DEPLOYMENT, may=SEES_STAGING),
    "api-deployment-rollback": api(("POST",), may=ON_CALL, args=DEPLOYMENT,
                                   body={"reason": "matrix"}),
    "api-deployment-cancel": api(("POST",), may=DEPLOYS_STAGING, args=ATTENTION),
    "api-deployment-retry-step": api(("POST",), may=DEPLOYS_STAGING, args=ATTENTION,
                                     body={"reason": "matrix"}),
    "api-deployment-mark-step-done": api(("POST",), may=DEPLOYS_STAGING, args=ATTENTION,
                                         body={"reason": "matrix"}),
    # A bearer token's step-up: a session is refused (token_required).
    "api-auth-step-up": api(("POST",), may=NOBODY, body={"code": "000000"}),
    "api-audit-events": api(may=AUDITORS),
    "api-dora": api(),
    "api-hook-ci": api(("POST",), may=NOBODY, refused=HOOK_REFUSED,
                       body={"release": "release", "check": "tests", "status": "passed"}),
    "api-hook-push": api(("POST",), may=NOBODY, refused=HOOK_REFUSED,
                         body={"application": "storefront", "version": "9.9.10"}),
    "api-hook-alertmanager": api(("POST",), may=NOBODY, refused=HOOK_REFUSED,
                                 body={"alerts": []}),
    # The policy document (docs/policies.md): everyone reads it; tech leads propose.
    "api-policy-current": api(),
    "api-policies": api(("POST",), may=frozenset({"techlead", "admin"}),
                        body={"document": "policy: 1\nenvironments: {}\n"}),
    "api-policy-test": api(("POST",), body={"document": "policy: 1\nenvironments: {}\n"}),
    # Backtests read every change's facts: auditors, admins, who proposes (tech leads)
    # and who decides policy versions (CAB, security).
    "api-policy-backtest": api(("POST",), may=BACKTESTERS,
                               body={"document": "policy: 1\nenvironments: {}\n"}),
    "api-policy-shadow": api(may=BACKTESTERS),
    # Anything else under /api/v1/: a JSON 404 for everyone.
    "api/v1/^.*$": public(("GET", "POST"), status=404, url="/api/v1/no-such-endpoint"),
    # --- pages ---------------------------------------------------------------------------
    "home": page(),
    "healthz": public(),
    # 503 until a worker and beat are alive: the test run starts neither here.
    "readyz": public(status=503),
    "login": public(("GET", "POST", "PUT"), ok=(200, 302)),
    "logout": public(("POST",), status=302),
    "inbox": page(),
    # CAB meetings: the board's members and administrators see them; the chair (cab)
    # runs them; a decision needs a member marked present (nobody is, here).
    "cab": page(may=CAB_MEMBERS),
    "cab-meeting": page(args=MEETING, may=CAB_MEMBERS),
    "cab-minutes-pdf": page(args=MEETING, may=CAB_MEMBERS),
    "cab-next-ics": page(args=MEETING, may=CAB_MEMBERS),
    "cab-attendance": page(("POST",), may=CHAIR, args=MEETING,
                           body={"member": "cab_user", "present": "cab_user"},
                           refused=PAGE_REFUSED),
    "cab-agenda-build": page(("POST",), may=CHAIR, args=MEETING, refused=PAGE_REFUSED),
    "cab-item-add": page(("POST",), may=CHAIR, args=MEETING, body={"change": "prod_change"},
                         refused=PAGE_REFUSED),
    "cab-item-defer": page(("POST",), may=CHAIR, args=MEETING_ITEM,
                           body={"reason": "waiting for the load test"}, refused=PAGE_REFUSED),
    "cab-item-decide": page(("POST",), may=NOBODY, args=MEETING_ITEM,
                            body={"decision": "approve"}, refused=PAGE_REFUSED),
    "cab-close": page(("POST",), may=CHAIR, args=MEETING, refused=PAGE_REFUSED),
    "policies": page(("GET", "POST"), may={"GET": EVERYONE,
                                           "POST": frozenset({"techlead", "admin"})},
                     body={"document": "policy: 1\nenvironments: {}\n"},
                     refused=FORM_REFUSED),
    "policy-version": page(args={"number": "policy_number"}),
    # Nobody here may decide the first version (it takes no decisions).
    "policy-decide": page(("POST",), may=NOBODY, args={"number": "policy_number"},
                          body={"role": "cab", "decision": "approve"}, refused=PAGE_REFUSED),
    "auditor-policies": page(may=AUDITORS),
    "policy-backtest": page(("GET", "POST"), may=BACKTESTERS,
                            body={"document": "policy: 1\nenvironments: {}\n",
                                  "months": "1"}),
    "change-list": page(),
    # The form is everyone's; what it may request is the service's answer.
    "change-new": page(("GET", "POST"), may={"GET": EVERYONE, "POST": REQUESTS_STAGING},
                       body=CHANGE_BODY, refused=FORM_REFUSED),
    "change-detail": page(args=CHANGE, may=SEES_STAGING),
    "gate-decide": page(("POST",), may=frozenset({"qa", "admin"}),
                        args={"pk": "change", "role": "qa_role"},
                        body={"decision": "approve", "fingerprint": "fingerprint"},
                        refused=PAGE_REFUSED),
    "change-deploy": page(("POST",), may=DEPLOYS_STAGING, args=CHANGE,
                          refused=PAGE_REFUSED),
    "change-cancel": page(("POST",), may=REQUESTER, args=CHANGE, refused=PAGE_REFUSED),
    "change-edit": page(("GET", "POST"), may={"GET": SEES_STAGING, "POST": REQUESTER},
                        args=CHANGE, body={"strategy": "canary", "rollback_plan": "Redeploy"},
                        refused=FORM_REFUSED),
    "change-submit": page(("POST",), may=frozenset({"engineer"}), args={"pk": "draft"},
                          refused=PAGE_REFUSED),
    "approval-withdraw": page(("POST",), may=frozenset({"techlead", "admin"}),
                              args={"pk": "change", "role": "tech_lead_role"},
                              refused=PAGE_REFUSED),
    "checklist-tick": page(("POST",), may=TICKS_CHECKLIST,
                           args={"pk": "change", "item_id": "item"},
                           body={"done": "on"}, refused=PAGE_REFUSED),
    # A change with no review open: 404 to everyone, nothing closed.
    "review-close": page(("POST",), may=NOBODY, args=CHANGE, refused=PAGE_REFUSED),
    "calendar": page(),
    "environments": page(("GET", "POST")),
    "delegations": page(("GET", "POST")),
    "subscriptions": page(("GET", "POST")),
    "release-new": page(("GET", "POST"), may={"GET": EVERYONE, "POST": REQUESTS_STAGING},
                        body={"application": "storefront", "version": "9.9.11"},
                        refused=FORM_REFUSED),
    "deployment-history": page(),
    "deployment-detail": page(args=DEPLOYMENT, may=SEES_STAGING),
    "deployment-progress": page(args=DEPLOYMENT, may=SEES_STAGING),
    "deployment-engine": page(args=DEPLOYMENT, may=SEES_STAGING),
    "deployment-rollback": page(("POST",), may=ON_CALL, args=DEPLOYMENT,
                                body={"reason": "matrix"}, refused=PAGE_REFUSED),
    "deployment-cancel": page(("POST",), may=DEPLOYS_STAGING, args=ATTENTION,
                              refused=PAGE_REFUSED),
    "deployment-retry-step": page(("POST",), may=DEPLOYS_STAGING, args=ATTENTION,
                                  body={"reason": "matrix"}, refused=PAGE_REFUSED),
    "deployment-mark-step-done": page(("POST",), may=DEPLOYS_STAGING, args=ATTENTION,
                                      body={"reason": "matrix"}, refused=PAGE_REFUSED),
    "audit-list": page(may=AUDITORS),
    "audit-export-csv": page(may=AUDITORS),
    "audit-export-jsonl": page(may=AUDITORS),
    "auditor-deployments": page(may=AUDITORS),
    "auditor-evidence": page(args=DEPLOYMENT, may=AUDITORS),
    "auditor-access": page(may=AUDITORS),
    # The quality of approvals (docs/cab.md).
    "auditor-approval-quality": page(may=AUDITORS),
    "auditor-approval-quality-csv": page(may=AUDITORS),
    "auditor-evidence-bundle": page(args=DEPLOYMENT, may=AUDITORS),
    "audit-bundle": page(may=AUDITORS),
    "audit-verifier": page(may=AUDITORS),
    "auditor-access-export-csv": page(may=AUDITORS),
    "token-list": page(("GET", "POST")),
    # The token's owner, or an administrator.
    "token-revoke": page(("POST",), may=frozenset({"engineer", "admin"}), args={"pk": "token"},
                         refused=PAGE_REFUSED),
    "metrics": page(),
    "dashboard": page(),
    "dashboard-live": page(),
    "configuration-detail": page(args={"application": "app", "environment": "env"},
                                 may=SEES_STAGING),
    "configuration-diff": page(args={"application": "app", "environment": "env"},
                               may=SEES_STAGING),
    # The admin's sign-in leads to the portal's; signed in without staff rights, 403.
    "admin-login": page(may=STAFF, anonymous=302, ok=(200, 302), refused=(403,)),
    # An unknown or another person's interrupted action: back home, nothing resumed.
    "step-up-resume": page(("GET", "POST"), args={"stash": "stash"}, ok=(302,)),
    # The page that says a second factor is required answers 403 by design.
    "second-factor-required": page(ok=(403,)),
    "api-schema": public(),
    "api-docs": public(),
    # Prometheus: a bearer token or an allowed network, else 404 (docs/observability.md).
    "prometheus-metrics": public(status=404),
    "security": page(),
    "security-sessions-end-others": page(("POST",), ok=(200, 302)),
    # Redirects (every method) to the Security page.
    "accounts/2fa/": public(ALL_METHODS, status=302, url="/accounts/2fa/"),
    "accounts/sessions/": public(ALL_METHODS, status=302, url="/accounts/sessions/"),
    # Old admin links of the models that moved out of core lead to their new pages; the
    # admin there asks for staff rights (the "admin/" prefix row).
    "^admin/core/apitoken/(?P<rest>.*)$": public(ALL_METHODS, status=302,
                                                  url="/admin/core/apitoken/"),
    "^admin/core/auditevent/(?P<rest>.*)$": public(ALL_METHODS, status=302,
                                                    url="/admin/core/auditevent/"),
    # Passwords are set by an administrator: allauth's reset pages are refused.
    "^accounts/password/reset/": public(("GET", "POST"), status=404,
                                        url="/accounts/password/reset/"),
}


# --- Production: the same routes on Production's objects ----------------------------------
# People sign in here without a second factor: whoever holds the permission in
# Production is refused for want of one, the others as in staging.
PROD_CHANGE = {"pk": "prod_change"}
PROD_DEPLOYMENT = {"pk": "prod_deployment"}
PROD_ATTENTION = {"pk": "prod_attention"}
SEES_PRODUCTION = frozenset({"engineer", "techlead", "cab", "security", "business", "oncall",
                             "auditor", "admin"})
PRODUCTION: dict[str, Row] = {
    "api-change-approve": api(("POST",), may=NOBODY, step_up=frozenset({"cab", "admin"}),
                              args=PROD_CHANGE, body={"gate": "cab"}),
    "api-change-reject": api(("POST",), may=NOBODY, step_up=frozenset({"cab", "admin"}),
                             args=PROD_CHANGE, body={"gate": "cab", "comment": "no"}),
    "gate-decide": page(("POST",), may=NOBODY, step_up=frozenset({"cab", "admin"}),
                        args={"pk": "prod_change", "role": "cab_role"},
                        body={"decision": "approve", "fingerprint": "prod_fingerprint"},
                        refused=PAGE_REFUSED),
    "api-deployment-rollback": api(("POST",), may=NOBODY, args=PROD_DEPLOYMENT,
                                   step_up=ON_CALL, body={"reason": "matrix"}),
    "deployment-rollback": page(("POST",), may=NOBODY, args=PROD_DEPLOYMENT,
                                step_up=ON_CALL, body={"reason": "matrix"},
                                refused=PAGE_REFUSED),
    "api-deployment-retry-step": api(("POST",), may=NOBODY, args=PROD_ATTENTION,
                                     step_up=ON_CALL, body={"reason": "matrix"}),
    "api-deployment-mark-step-done": api(("POST",), may=NOBODY, args=PROD_ATTENTION,
                                         step_up=ON_CALL, body={"reason": "matrix"}),
    "deployment-retry-step": page(("POST",), may=NOBODY, args=PROD_ATTENTION,
                                  step_up=ON_CALL, body={"reason": "matrix"},
                                  refused=PAGE_REFUSED),
    "deployment-mark-step-done": page(("POST",), may=NOBODY, args=PROD_ATTENTION,
                                      step_up=ON_CALL, body={"reason": "matrix"},
                                      refused=PAGE_REFUSED),
    "api-change": api(args=PROD_CHANGE, may=SEES_PRODUCTION),
    "change-detail": page(args=PROD_CHANGE, may=SEES_PRODUCTION),
}


def walked_routes(patterns=None) -> dict[str, list[URLPattern]]:
    walked: dict[str, list[URLPattern]] = {}
    for key, _route, pattern, _included in walk(patterns):
        walked.setdefault(key, []).append(pattern)
    return walked


def without_a_row(patterns=None) -> list[str]:
    return sorted(set(walked_routes(patterns)) - set(ROUTES) - set(INCLUDED))


def test_a_new_route_without_a_row_is_caught():
    from django.http import HttpResponse
    from django.urls import include, path

    def view(request):
        return HttpResponse()

    conf = [*get_resolver().url_patterns,
            path("reports/new/", view, name="report-new"),
            path("api/v1/", include([path("reports/", view, name="api-reports")])),
            path("unnamed/", view)]

    assert without_a_row(conf) == ["api-reports", "report-new", "unnamed/"]


def test_every_route_has_a_row():
    walked = walked_routes()
    missing = without_a_row()
    stale = sorted(set(ROUTES) - set(walked))
    assert not missing, f"routes without a row in ROUTES (say who may use them): {missing}"
    assert not stale, f"rows of ROUTES for routes that are gone: {stale}"
    # A class-based view says which methods it handles: its row asks each of them.
    differing = []
    for key, row in ROUTES.items():
        [pattern] = walked[key]
        methods = view_methods(pattern)
        if methods is not None and methods != set(row.methods):
            differing.append(f"{key}: the view handles {sorted(methods)}, "
                             f"the row asks {sorted(row.methods)}")
    assert not differing, "\n".join(differing)


# --- the objects the rows' URLs name -----------------------------------------------------


@pytest.fixture
def objects(demo, settings):
    from approvals import services as approvals
    from approvals.models import ChangeRequest, ChecklistItem
    from audit.trail import System
    from identity.services import api_token_issue

    settings.PORTAL_TASK_DISPATCH = "hold"
    release = ReleaseFactory()
    change = request_change(demo.engineer, "staging", release=release)
    item = (ChecklistItem.objects.filter(change=change, auto_check="").first()
            or ChecklistItem.objects.create(change=change, kind="pre_deploy",
                                            text="Announced in the channel"))
    draft = request_change(demo.engineer, "staging", draft=True)
    deployment = finished_deployment("staging", started_by=demo.oncall)
    now = timezone.now()
    # As the engine leaves a run whose step was interrupted and is not safe to repeat.
    attention = Deployment.objects.create(
        application=Application.objects.get(slug="storefront"),
        environment=Environment.objects.get(slug="staging"), release=ReleaseFactory(),
        status=Deployment.Status.NEEDS_ATTENTION, started_by=demo.oncall,
        created_at=now - timedelta(minutes=3), started_at=now - timedelta(minutes=3))
    DeploymentStep.objects.create(deployment=attention, position=1, name="switch",
                                  title="Switch app-1", status=DeploymentStep.Status.RUNNING)
    token, _ = api_token_issue(actor=System("test"), user=demo.engineer, name="matrix")
    prod_change = request_change(demo.engineer, "production", rollback_plan="Redeploy",
                                 on_call=demo.oncall)
    prod_deployment = finished_deployment("production", started_by=demo.oncall)
    prod_attention = Deployment.objects.create(
        application=Application.objects.get(slug="storefront"),
        environment=Environment.objects.get(slug="production"), release=ReleaseFactory(),
        status=Deployment.Status.NEEDS_ATTENTION, started_by=demo.oncall,
        created_at=now - timedelta(minutes=3), started_at=now - timedelta(minutes=3))
    DeploymentStep.objects.create(deployment=prod_attention, position=1, name="switch",
                                  title="Switch app-1", status=DeploymentStep.Status.RUNNING)
    return {"release": release.pk, "change": change.pk, "item": item.pk, "draft": draft.pk,
            "deployment": deployment.pk, "attention": attention.pk, "token": token.pk,
            "fingerprint": approvals.fingerprint(ChangeRequest.objects.get(pk=change.pk)),
            "app": "storefront", "env": "staging", "stash": "no-such-stash",
            "qa_role": "qa", "tech_lead_role": "tech_lead", "cab_role": "cab",
            "prod_change": prod_change.pk, "prod_deployment": prod_deployment.pk,
            "policy_number": 1,
            "prod_attention": prod_attention.pk,
            "prod_fingerprint": approvals.fingerprint(
                ChangeRequest.objects.get(pk=prod_change.pk)),
            **cab_meeting(demo, prod_change)}


def cab_meeting(demo, change) -> dict:
    """A production CAB schedule chaired by ``cab``, its next meeting with ``change`` on
    the agenda, and the meeting after it."""
    from datetime import time

    from approvals import services as approvals
    from approvals.models import CabSchedule

    schedule = CabSchedule.objects.create(
        name="Production CAB", environment=Environment.objects.get(slug="production"),
        weekday=2, time=time(10), chair=demo.cab)
    meeting = approvals.meeting_next(schedule)
    approvals.meeting_next(schedule, after=meeting.starts_at)
    item = next(i for i in approvals.agenda_build(meeting) if i.change_id == change.pk)
    return {"meeting": meeting.pk, "meeting_item": item.pk, "cab_user": demo.cab.pk}


@pytest.fixture
def people(demo):
    """A signed-in client per person of the cast, and an anonymous one."""
    clients = {ANONYMOUS: Client()}
    for name in CAST:
        client = Client()
        client.force_login(getattr(demo, name))
        clients[name] = client
    return clients


def test_every_route_answers_as_its_row_says(objects, people):
    """One database, one set of objects and sign-ins for all rows: each row runs in a
    savepoint rolled back after it, so every row meets the same objects."""
    wrong = []
    for key in sorted(ROUTES):
        with transaction.atomic():
            wrong += check_route(key, ROUTES[key], objects, people)
            transaction.set_rollback(True)
    assert not wrong, "\n".join(wrong)


def test_production_refuses_for_want_of_a_second_factor(objects, people):
    """Production's decisions, asked by people signed in without a second factor."""
    wrong = []
    for key in sorted(PRODUCTION):
        with transaction.atomic():
            wrong += check_route(key, PRODUCTION[key], objects, people)
            transaction.set_rollback(True)
    assert not wrong, "\n".join(wrong)


# --- the includes of other projects --------------------------------------------------------


@pytest.mark.parametrize("prefix", sorted(INCLUDED))
def test_the_routes_of_an_included_project_answer_without_a_server_error(prefix, people):
    wrong = []
    for _key, route, pattern, included in walk():
        if included != prefix or pattern.pattern.regex.groups or "<" in route:
            continue
        url = "/" + route.lstrip("^").rstrip("$").replace("\\Z", "")
        for who in (ANONYMOUS, "engineer"):
            response = people[who].get(url)
            code = response.status_code
            if code >= 500:
                wrong.append(f"GET {url} as {who}: {code}")
            elif prefix == "admin/" and url not in ("/admin/login/", "/admin/logout/") and not (
                    code == 302 and "login" in response["Location"]):
                wrong.append(f"GET {url} as {who}: {code}, expected the admin's sign-in")
    assert not wrong, "\n".join(wrong)

