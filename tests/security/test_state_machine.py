"""Random people doing random things: no sequence of actions ships around the controls.

A Hypothesis state machine drives the services (the single road every page, API call,
hook and beat task takes) with the demo cast plus people who hold nothing, delegates
and people who lose their permissions half-way. People act as the portal sees them: a
signed-in session carrying their last second-factor check (allauth's record), or an
API request authenticated by a token (``identity.authentication``), bound to
``core.context`` as the middleware and DRF bind them, so ``identity.assurance`` reads the
check behind each decision from the request as it does in production. Besides them:
an administrator minting API tokens (for themselves, for others, for the CI account),
the operator's ``manage.py issue_token`` with names in any case (``QA``), the minutes
passing (checks grow old), CI reporting a release's authors and mergers late (``CAB``,
``Cab``), administrators editing what runs (executor settings, targets) in the admin,
and Alertmanager alerts sent with an engineer's, on-call's or the hook's credentials.

After every step it checks, from the database, the invariant the SOP rests on:

    every deployment that exists was started by someone holding ``deploy`` (or, for a
    rollback, ``rollback``) on its environment, for a change whose gates were all
    approved by eligible, distinct people, never a service account, none of them its
    requester, authors or mergers or standing in for them (in any spelling, as known
    when they decided and when it started), on the fingerprint that was
    deployed (executor, its settings and the targets included); in Production each
    approval, deploy press and rollback was made with a fresh check of the person's own
    second factor: not an administrator's, not one older than PORTAL_STEP_UP_SECONDS.

Eligibility and freshness are judged by the test's own oracle at the moment of each
decision (the permission or a live delegation held then; the person's own last check
and when it was), not by asking the service. Refusals of Production actions the moves
cause must be in the audit trail.

``PORTAL_STATE_MACHINE_EXAMPLES`` sets how many runs (40 in ``make test``; the bench
and nightly settings use more, see docs/security.md).
"""

from __future__ import annotations

import io
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import pytest
from allauth.account.internal.flows.login import record_authentication
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import TOTP
from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.contrib.sessions.backends.signed_cookies import SessionStore
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.db.models import F
from django.test import Client, RequestFactory, TestCase
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from approvals import services as approvals
from approvals.models import Approval, ChangeRequest, ChangeType, Delegation, Gate, GateRole
from audit.models import AuditEvent
from audit.trail import System
from catalog.models import Application, Environment, Target
from core import context
from core.context import RequestContext
from core.errors import ChangedSinceViewed, Conflict, DomainError, Refused
from deployments import services as engine
from deployments.models import Deployment
from deployments.signals import deployment_finished
from identity import accounts
from identity import services as core_services
from identity.authentication import BearerTokenAuthentication
from identity.models import ApiToken, hash_token
from integrations import hooks
from integrations.hooks import HookCredential
from tests.conftest import PASSWORD, totp_code
from tests.factories import ReleaseFactory

EXAMPLES = int(os.environ.get("PORTAL_STATE_MACHINE_EXAMPLES", "40"))
STEPS = int(os.environ.get("PORTAL_STATE_MACHINE_STEPS", "40"))

# The demo cast, a delegate who holds nothing of their own, and an outsider.
PEOPLE = ["engineer", "techlead", "qa", "cab", "cab2", "security", "business", "oncall",
          "dana", "outsider"]
ADMIN = "admin"
CI = "ci-bot"
# Group memberships the machine may take away and give back (people lose `deploy`).
MEMBERSHIPS = {"engineer": "engineers", "oncall": "on-call", "techlead": "tech-leads",
               "cab": "cab"}
ENVIRONMENTS = ["staging", "production"]
HOLDERS = {GateRole.TECH_LEAD: ["techlead", "dana"], GateRole.QA: ["qa"],
           GateRole.CAB: ["cab", "cab2"], GateRole.SECURITY: ["security"],
           GateRole.BUSINESS: ["business"], GateRole.EMERGENCY: ["oncall", "dana"]}
PLANS = ["Redeploy the previous release with the portal's rollback."] * 3 + [""]
# Who requests: mostly people who may, now and then someone who may not.
REQUESTERS = ["engineer", "engineer", "techlead", "oncall", "oncall", "oncall", "cab", "dana"]
# Names as CI and the identity provider spell them: mostly as the portal does, now and
# then in another case (`CAB` is `cab`).
SPELLED = PEOPLE + ["CAB", "Cab", "QA", "TechLead"]
SPELLINGS = {"as is": str, "upper": str.upper, "title": str.title}
# Whose tokens an administrator or the owner mints (the CI account and the admin too).
TOKEN_OWNERS = ["cab", "cab2", "techlead", "security", "business", "oncall", "engineer",
                "qa", CI, ADMIN]
ISSUERS = [ADMIN, "owner", "operator"]
ROADS = ["page", "token", "fresh token"]
# Whose tokens decide in Production in the demo (a token each, made at the start).
DECIDERS = ["cab", "techlead", "oncall", "cab2", "security", "business"]
# What a request is made of: mostly self-starting ones, authored by one person or none.
REQUEST = dict(
    requester=st.sampled_from(REQUESTERS), env=st.sampled_from(ENVIRONMENTS + ["production"]),
    change_type=st.sampled_from(ChangeType.values), plan=st.sampled_from(PLANS),
    authors=st.lists(st.sampled_from(SPELLED), max_size=1),
    mergers=st.lists(st.sampled_from(SPELLED), max_size=1),
    deploy_when_approved=st.booleans(),
    scheduled=st.sampled_from([False, False, True]),
    on_call=st.sampled_from([None, "oncall", "engineer"]),
    step_up=st.sampled_from([True, True, False]))
# Production changes the demo's people can take through (requester, type): someone
# other than the requester holds each gate.
PRODUCTION_REQUESTS = [("engineer", ChangeType.EMERGENCY), ("engineer", ChangeType.HOTFIX),
                       ("techlead", ChangeType.EMERGENCY), ("oncall", ChangeType.HOTFIX)]
# The machine's client address, so its sign-in attempts count against nobody else's.
ADDRESS = "192.0.2.77"


# --- the oracle's reading of the world ---------------------------------------------------


def _user(username: str):
    # A fresh instance: Django caches permissions on the user object.
    return get_user_model().objects.get(username=username)


def _holds(username: str, codename: str, environment: Environment) -> bool:
    return _user(username).has_perm(f"catalog.{codename}", environment)


def _may_decide_now(username: str, environment: Environment, role: str):
    """The oracle's answer: (eligible, delegator) from permissions and live delegations."""
    if _holds(username, GateRole(role).permission, environment):
        return True, None
    for d in Delegation.objects.filter(delegate__username=username, environment=environment,
                                       role=role, revoked_at__isnull=True,
                                       expires_at__gt=timezone.now()
                                       ).select_related("delegator"):
        if _holds(d.delegator.username, GateRole(role).permission, environment):
            return True, d.delegator.username
    return False, None


def _barred(change: ChangeRequest) -> frozenset[str]:
    """Who may not decide ``change``, as far as the portal knows now."""
    release = change.release
    return frozenset({change.requested_by.username} | set(release.authors or [])
                     | set(release.mergers or []))


def _is_barred(username: str, barred) -> bool:
    """Barred in any spelling: `CAB` among the authors is `cab`."""
    return username.casefold() in {name.casefold() for name in barred}


def _inputs_now(application_id: int, environment_id: int) -> dict:
    """What a deployment of the application there would run with, from the catalogue."""
    app = Application.objects.get(pk=application_id)
    targets = Target.objects.filter(application_id=application_id,
                                    environment_id=environment_id)
    return {"executor": [app.executor, app.executor_settings or {}],
            "targets": sorted([t.name, t.address] for t in targets)}


def _inputs_ran(deployment: Deployment) -> dict:
    """What the deployment runs with: what it kept when made, where it keeps that."""
    kept = getattr(deployment, "inputs", None) or {}
    if "executor_settings" in kept and "targets" in kept:
        return {"executor": [kept.get("executor"), kept.get("executor_settings") or {}],
                "targets": sorted([t["name"], t["address"]] for t in kept["targets"])}
    return _inputs_now(deployment.application_id, deployment.environment_id)


def _has_factor(username: str) -> bool:
    return Authenticator.objects.filter(user__username=username,
                                        type__in=("totp", "webauthn")).exists()


def _last_event() -> int:
    return AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def _assert_refusal_audited(since: int, what: str) -> None:
    assert AuditEvent.objects.filter(pk__gt=since, action__contains="refused").exists(), (
        f"{what} was refused with nothing on the audit trail")


@dataclass(frozen=True)
class Decided:
    """What the oracle knew when an approval was given."""

    via: str  # session or token
    fresh: bool  # the person's own second-factor check, within PORTAL_STEP_UP_SECONDS
    barred: frozenset[str]  # requester, authors and mergers known then
    inputs: dict  # the executor, its settings and the targets then


class ControlsMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        # Each run starts from the demo data and leaves nothing behind.
        self._savepoint = transaction.savepoint()
        self.changes: list[int] = []
        # What ran before the story (the release Production runs) is not its doing.
        self.seen_deployments: set[int] = set(Deployment.objects.values_list("pk", flat=True))
        # approval id -> eligible (and on whose behalf) when the oracle last looked.
        self.expected_eligible: dict[tuple[int, str], tuple[bool, str | None]] = {}
        self.decided: dict[int, Decided] = {}
        # deployment id -> (road, fresh own check) of the person who pressed Deploy or
        # rolled back (starts by the portal itself are not in here).
        self.pressed: dict[int, tuple[str, bool]] = {}
        self.moved: dict[str, list] = {}
        # username -> their signed-in session, and the time of their last own check in
        # it (epoch seconds; the oracle's, moved back when the minutes pass).
        self.sessions: dict[str, SessionStore] = {}
        self.checked_at: dict[str, float] = {}
        # Tokens minted: pk, raw value, owner, who issued it, and the time of the
        # owner's own last check made through it (None: none of theirs).
        self.tokens: list[dict] = []
        self.alerts = 0
        self.admin_client: Client | None = None

    def teardown(self):
        transaction.savepoint_rollback(self._savepoint)

    # --- helpers ---------------------------------------------------------------

    def _change(self, pick: int, *statuses: str) -> ChangeRequest | None:
        """One of the machine's changes, the newest mostly; with ``statuses``, one in
        those if there is one (where the page shows the button)."""
        pks = self.changes
        if statuses:
            pks = list(ChangeRequest.objects.filter(pk__in=self.changes, status__in=statuses)
                       .order_by("pk").values_list("pk", flat=True)) or pks
        if not pks:
            return None
        return ChangeRequest.objects.with_related().get(pk=pks[-1 - pick % len(pks)])

    def _try(self, call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except DomainError:
            return None

    def _attempt(self, call, *, audited: tuple, environment: Environment, what: str,
                 **kwargs):
        """Call a service deciding something; a refusal of a Production action must be
        on the audit trail. Returns (result, error)."""
        since = _last_event()
        try:
            return call(**kwargs), None
        except DomainError as exc:
            if environment.production and isinstance(exc, audited):
                _assert_refusal_audited(since, f"{what} ({exc.code})")
            return None, exc

    def _session(self, username: str) -> SessionStore:
        if username not in self.sessions:
            self.sessions[username] = SessionStore()
        return self.sessions[username]

    def _fresh(self, username: str, token: dict | None = None) -> bool:
        """The oracle: the person's own last check (in this session, or made through
        this token) is within PORTAL_STEP_UP_SECONDS."""
        at = token["own_at"] if token is not None else self.checked_at.get(username)
        return at is not None and 0 <= time.time() - at <= settings.PORTAL_STEP_UP_SECONDS

    @contextmanager
    def _acting(self, username: str, token: dict | None = None):
        """The request the portal binds while ``username`` acts: their signed-in session,
        or an API request with ``token`` authenticated as the API authenticates it."""
        factory = RequestFactory(REMOTE_ADDR=ADDRESS)
        if token is None:
            request = factory.post("/")
            request.user = _user(username)
            request.session = self._session(username)
            request.auth = None
        else:
            request = factory.post("/api/v1/", HTTP_AUTHORIZATION=f"Bearer {token['raw']}")
        bound = context.bind_request(RequestContext(request_id=f"sm-{username}",
                                                    ip=ADDRESS, request=request))
        try:
            if token is not None:
                # DRF sets both on the underlying request, which the context holds.
                request.user, request.auth = BearerTokenAuthentication().authenticate(request)
            yield request
        finally:
            context.unbind_request(bound)

    @contextmanager
    def _hook(self, hook: str):
        """A signed hook's request: it acts as the CI service account."""
        request = RequestFactory(REMOTE_ADDR=ADDRESS).post(f"/api/v1/hooks/{hook}")
        request.user, request.auth = _user(CI), HookCredential(hook=hook)
        bound = context.bind_request(RequestContext(request_id=f"sm-hook-{hook}", ip=ADDRESS,
                                                    request=request))
        try:
            yield request
        finally:
            context.unbind_request(bound)

    def _step_up(self, username: str) -> None:
        """The person answers the second-factor page: allauth records the check in
        their session (as its step-up view does after a right code)."""
        factor = Authenticator.objects.filter(user__username=username,
                                              type=Authenticator.Type.TOTP).first()
        if factor is None:
            return  # nothing to answer with
        request = RequestFactory(REMOTE_ADDR=ADDRESS).post("/")
        request.user, request.session = _user(username), self._session(username)
        record_authentication(request, request.user, "mfa", type=factor.type, id=factor.pk)
        self.checked_at[username] = request.session["account_authentication_methods"][-1]["at"]

    def _token_step_up(self, token: dict, right: bool = True) -> None:
        """The owner answers a check through the token (POST /api/v1/auth/step-up)."""
        owner = _user(token["owner"])
        factor = Authenticator.objects.filter(user=owner, type=Authenticator.Type.TOTP).first()
        code = totp_code() if right else "000000"
        if factor is not None and right:
            # In the machine's story minutes pass between steps; on the test's clock they
            # do not, so the mark a code leaves for its period is cleared: the service's
            # own check of the code is what is exercised.
            cache.delete(TOTP(factor)._get_used_cache_key(code))
        since = _last_event()
        with self._acting(token["owner"], token) as request:
            try:
                checked = core_services.api_token_step_up(actor=owner, token=request.auth,
                                                          code=code)
            except DomainError as exc:
                assert AuditEvent.objects.filter(
                    pk__gt=since, action__startswith="token.step_up").exists(), (
                    f"{owner}'s step-up through a token was refused ({exc.code}) with "
                    "nothing on the audit trail")
                return
        assert right and factor is not None, f"a wrong code stepped up {owner}'s token"
        token["own_at"] = checked.second_factor_at.timestamp()

    def _token_of(self, username: str) -> dict:
        """A token of ``username``'s: one minted already, else the operator's."""
        for token in self.tokens:
            if token["owner"] == username:
                return token
        token, raw = core_services.api_token_issue(
            actor=System("manage.py issue_token"), user=_user(username),
            name=f"sm-operator-{len(self.tokens)}")
        self.tokens.append({"pk": token.pk, "raw": raw, "owner": username,
                            "issuer": "operator", "own_at": None})
        return self.tokens[-1]

    # --- actions ---------------------------------------------------------------

    @initialize(**REQUEST)
    def first_request(self, **kwargs):
        self.create(**kwargs)

    @initialize(who_what=st.sampled_from(PRODUCTION_REQUESTS),
                authors=REQUEST["authors"], mergers=REQUEST["mergers"],
                deploy_when_approved=st.booleans())
    def first_production_request(self, who_what, authors, mergers, deploy_when_approved):
        """Every story has a Production change on its way that the demo's people can
        approve and deploy, so the search reaches Production in most runs."""
        requester, change_type = who_what
        self.create(requester=requester, env="production", change_type=change_type,
                    plan=PLANS[0], authors=authors, mergers=mergers,
                    deploy_when_approved=deploy_when_approved and requester == "oncall",
                    scheduled=False, on_call="oncall", step_up=True)

    @rule(**REQUEST)
    def create(self, requester, env, change_type, plan, authors, mergers,
               deploy_when_approved, scheduled, on_call, step_up):
        release = ReleaseFactory(authors=authors, mergers=mergers)
        if step_up:
            self._step_up(requester)
        with self._acting(requester):
            change = self._try(
                approvals.change_request_create, actor=_user(requester), release=release,
                environment=Environment.objects.get(slug=env), change_type=change_type,
                rollback_plan=plan, on_call=_user(on_call) if on_call else None,
                deploy_when_approved=deploy_when_approved,
                scheduled_for=timezone.now() + timedelta(hours=1) if scheduled else None)
        if change is not None:
            self.changes.append(change.pk)

    @rule(pick=st.integers(0, 50), actor=st.sampled_from(PEOPLE),
          field=st.sampled_from(["strategy", "rollback_plan", "risk", "impact",
                                 "scheduled_for", "deploy_when_approved"]))
    def edit(self, pick, actor, field):
        change = self._change(pick)
        if change is None:
            return
        value = {"strategy": "canary" if change.strategy != "canary" else "rolling",
                 "rollback_plan": change.rollback_plan + " Then verify.",
                 "risk": "high" if change.risk != "high" else "low",
                 "impact": change.impact + " More users.",
                 "scheduled_for": timezone.now() + timedelta(hours=2),
                 "deploy_when_approved": not change.deploy_when_approved}[field]
        try:
            with self._acting(actor):
                approvals.change_request_update(actor=_user(actor), change=change,
                                                **{field: value})
        except (DomainError, TypeError):
            # TypeError: a field this version does not let anyone edit.
            return

    @rule(person=st.sampled_from(PEOPLE + [ADMIN]))
    def steps_up(self, person):
        self._step_up(person)

    @rule()
    def minutes_pass(self):
        """PORTAL_STEP_UP_SECONDS and a minute go by: every second-factor check on record
        (sessions, tokens) is that much older."""
        shift = settings.PORTAL_STEP_UP_SECONDS + 60
        for username, session in self.sessions.items():
            records = session.get("account_authentication_methods") or []
            session["account_authentication_methods"] = [
                {**r, "at": r["at"] - shift} if "at" in r else r for r in records]
            if username in self.checked_at:
                self.checked_at[username] -= shift
        ApiToken.objects.filter(second_factor_at__isnull=False).update(
            second_factor_at=F("second_factor_at") - timedelta(seconds=shift))
        for token in self.tokens:
            if token["own_at"] is not None:
                token["own_at"] -= shift

    @rule(pick=st.integers(0, 50), actor=st.one_of(st.none(), st.sampled_from(PEOPLE)),
          gate=st.integers(0, 3),
          stale=st.sampled_from([False, False, True]),
          reject=st.sampled_from([False, False, False, True]),
          step_up=st.sampled_from([True, True, False]))
    def decide(self, pick, actor, gate, stale, reject, step_up):
        change = self._change(pick)
        if change is None:
            return
        # One of the change's own gates mostly, now and then one it does not have.
        roles = [g.role for g in change.gates.all()] + [GateRole.BUSINESS]
        role = roles[gate % len(roles)]
        # None: whoever holds the gate in the demo (the search finds approvals sooner).
        # Stale: what a page opened before the last edit would send back.
        actor = actor or HOLDERS[role][gate % len(HOLDERS[role])]
        if step_up:
            self._step_up(actor)
        self._decide(change.pk, actor, role, stale=stale, reject=reject)

    @rule(pick=st.integers(0, 50), road=st.sampled_from(ROADS),
          then=st.sampled_from(["wait", "deploy", "ship"]))
    def approvers_come_by(self, pick, road, then):
        """Each gate still pending gets a look from the people who usually decide it (on
        ``road``, see ``_road``). Then on-call may tick the checklist and press Deploy
        the same way (``deploy``), and the run may end well (``ship``)."""
        change = self._change(pick, ChangeRequest.Status.PENDING_APPROVAL,
                              ChangeRequest.Status.APPROVED)
        if change is None:
            return
        for gate in change.gates.filter(status=Gate.Status.PENDING):
            for holder in HOLDERS[gate.role]:
                self._decide(change.pk, holder, gate.role, token=self._road(holder, road))
        if then == "wait":
            return
        self._tick(change, "oncall")
        deployment = self._press_deploy(change, "oncall", token=self._road("oncall", road))
        if deployment is not None and then == "ship":
            self._finish(deployment.pk, Deployment.Status.SUCCEEDED)

    def _road(self, username: str, road: str) -> dict | None:
        """How ``username`` acts: on the page, confirming their second factor first; or
        with the newest token of theirs, as it is (``token``) or after answering a check
        through it (``fresh token``); the page when they have no token."""
        if road != "page":
            for token in reversed(self.tokens):
                if token["owner"] == username:
                    if road == "fresh token":
                        self._token_step_up(token)
                    return token
        self._step_up(username)
        return None

    def _decide(self, change_pk, actor, role, stale=False, reject=False, token=None):
        change = ChangeRequest.objects.with_related().get(pk=change_pk)
        eligible = _may_decide_now(actor, change.environment, role)
        fresh = self._fresh(actor, token)
        barred = _barred(change)
        inputs = _inputs_now(change.release.application_id, change.environment_id)
        shown = "0" * 16 if stale else approvals.change_version(change)
        before = set(Approval.objects.filter(change=change).values_list("pk", flat=True))
        call = approvals.gate_reject if reject else approvals.gate_approve
        with self._acting(actor, token):
            self._attempt(call, audited=(Refused, ChangedSinceViewed),
                          environment=change.environment,
                          what=f"{actor}'s decision on the {role} gate of {change.reference}",
                          actor=_user(actor), change=change, role=role,
                          comment="Looked at it." if reject else "", **_seen(shown))
        for approval in Approval.objects.filter(change=change).exclude(pk__in=before):
            assert eligible[0], (f"{actor} decided the {role} gate of CR-{change.pk} "
                                 "without holding it")
            assert not stale, f"{actor}'s decision on a change they had not seen counted"
            self.expected_eligible[(approval.pk, actor)] = eligible
            self.decided[approval.pk] = Decided(via="token" if token else "session",
                                                fresh=fresh, barred=barred, inputs=inputs)

    @rule(pick=st.integers(0, 50), actor=st.sampled_from(PEOPLE),
          role=st.sampled_from(GateRole.values))
    def withdraw(self, pick, actor, role):
        change = self._change(pick)
        if change is not None:
            with self._acting(actor):
                self._try(approvals.approval_withdraw, actor=_user(actor), change=change,
                          role=role, reason="second thoughts")

    @rule(delegator=st.sampled_from(PEOPLE), delegate=st.sampled_from(PEOPLE + [CI]),
          env=st.sampled_from(ENVIRONMENTS), role=st.sampled_from(GateRole.values))
    def delegate(self, delegator, delegate, env, role):
        with self._acting(delegator):
            self._try(approvals.delegation_create, actor=_user(delegator),
                      environment=Environment.objects.get(slug=env), role=role,
                      delegate=_user(delegate), expires_at=timezone.now() + timedelta(days=1))

    @rule(actor=st.sampled_from(PEOPLE), pick=st.integers(0, 50))
    def revoke_delegation(self, actor, pick):
        delegations = list(Delegation.objects.filter(revoked_at__isnull=True).order_by("pk"))
        if delegations:
            with self._acting(actor):
                self._try(approvals.delegation_revoke, actor=_user(actor),
                          delegation=delegations[pick % len(delegations)])

    @rule(pick=st.integers(0, 50))
    def requester_moves_team(self, pick):
        """The person behind a change leaves the groups that gave them their permissions."""
        change = self._change(pick)
        if change is not None:
            person = change.deployer or change.requested_by
            self.moved[person.username] = list(person.groups.all())
            person.groups.clear()

    @rule(username=st.sampled_from(sorted(MEMBERSHIPS)))
    def comes_back(self, username):
        user = _user(username)
        user.groups.add(Group.objects.get(name=MEMBERSHIPS[username]),
                        *self.moved.pop(username, []))

    @rule(pick=st.integers(0, 50), actor=st.one_of(st.none(), st.sampled_from(PEOPLE)))
    def tick_checklist(self, pick, actor):
        change = self._change(pick)
        if change is not None:
            self._tick(change, actor or change.requested_by.username)

    def _tick(self, change: ChangeRequest, actor: str) -> None:
        for item in change.checklist.filter(done=False):
            if not item.automatic:
                with self._acting(actor):
                    self._try(approvals.checklist_item_set, actor=_user(actor), change=change,
                              item_id=item.pk, done=True, note="checked")

    @rule(pick=st.integers(0, 50), actor=st.one_of(st.none(), st.sampled_from(PEOPLE)),
          step_up=st.sampled_from([True, True, False]),
          tick=st.sampled_from([True, True, False]))
    def deploy(self, pick, actor, step_up, tick):
        """Someone presses Deploy (``tick``: ticking what is left on the checklist first)."""
        change = self._change(pick, ChangeRequest.Status.APPROVED)
        if change is not None:
            actor = actor or "oncall"  # None: on-call, who deploys everywhere
            if tick:
                self._tick(change, actor)
            if step_up:
                self._step_up(actor)
            self._press_deploy(change, actor)

    def _press_deploy(self, change: ChangeRequest, actor: str, token: dict | None = None):
        fresh = self._fresh(actor, token)
        with self._acting(actor, token):
            deployment, _ = self._attempt(
                approvals.change_request_deploy, audited=(Refused,),
                environment=change.environment,
                what=f"{actor}'s deploy of {change.reference}", actor=_user(actor),
                change=change)
        if deployment is not None:
            self.pressed[deployment.pk] = ("token" if token else "session", fresh)
        return deployment

    @rule(pick=st.integers(0, 50), actor=st.sampled_from(PEOPLE))
    def cancel(self, pick, actor):
        change = self._change(pick)
        if change is not None:
            with self._acting(actor):
                self._try(approvals.change_request_cancel, actor=_user(actor), change=change,
                          reason="not now")

    @rule()
    def scheduled_time_comes(self):
        # Beat, three hours later: every scheduled change is due.
        approvals.changes_start_scheduled(now=timezone.now() + timedelta(hours=3))

    @precondition(lambda self: self.seen_deployments)
    @rule(pick=st.integers(0, 50), outcome=st.sampled_from(
        [Deployment.Status.SUCCEEDED, Deployment.Status.FAILED]))
    def worker_finishes(self, pick, outcome):
        """What the worker does at the end of a run: the engine's finish, then its signal."""
        active = list(Deployment.objects.filter(status__in=Deployment.ACTIVE).order_by("pk"))
        if active:
            self._finish(active[pick % len(active)].pk, outcome)

    def _finish(self, pk: int, outcome: str) -> None:
        with transaction.atomic():
            deployment = (Deployment.objects.select_for_update(of=("self",))
                          .select_related("environment").get(pk=pk))
            engine.deployment_finish(deployment=deployment, status=outcome,
                                     reason="" if outcome == "succeeded" else "step failed")
        deployment_finished.send(sender=Deployment, deployment=deployment, status=outcome)

    @rule(pick=st.integers(0, 50), actor=st.one_of(st.none(), st.sampled_from(PEOPLE)),
          step_up=st.sampled_from([True, False]))
    def rollback(self, pick, actor, step_up):
        finished = list(Deployment.objects.filter(status=Deployment.Status.SUCCEEDED)
                        .select_related("environment").order_by("pk"))
        if not finished:
            return
        actor = actor or "oncall"  # None: on-call, who rolls back everywhere
        deployment = finished[-1 - pick % len(finished)]  # the newest mostly
        if step_up:
            self._step_up(actor)
        fresh = self._fresh(actor)
        with self._acting(actor):
            rolled, _ = self._attempt(
                engine.deployment_rollback, audited=(Refused, Conflict),
                environment=deployment.environment,
                what=f"{actor}'s rollback of #{deployment.pk}", actor=_user(actor),
                deployment=deployment, reason="errors are up")
        if rolled is not None:
            self.pressed[rolled.pk] = ("session", fresh)

    # --- tokens: minted by an administrator, the owner or the operator; used to decide --

    @initialize(tokens=st.lists(st.tuples(st.sampled_from(ISSUERS),
                                          st.sampled_from(DECIDERS), st.booleans()),
                                max_size=4))
    def first_tokens(self, tokens):
        """Tokens made before the story starts (scripts people already run)."""
        for issuer, owner, step_up in tokens:
            if issuer == "operator":
                self._token_of(owner)
            else:
                self.mints_token(issuer, owner, step_up)

    @rule(issuer=st.sampled_from([ADMIN, ADMIN, "owner"]), owner=st.sampled_from(TOKEN_OWNERS),
          step_up=st.sampled_from([True, True, False]))
    def mints_token(self, issuer, owner, step_up):
        """An administrator (or the owner) makes an API token on the tokens page."""
        issuer = owner if issuer == "owner" else issuer
        if step_up:
            self._step_up(issuer)
        # A check of the owner's own, when they make it themselves with one.
        own_at = self.checked_at.get(issuer) if (
            issuer == owner and self._fresh(issuer) and _has_factor(owner)) else None
        since = _last_event()
        with self._acting(issuer):
            try:
                token, raw = core_services.api_token_issue(
                    actor=_user(issuer), user=_user(owner), name=f"sm-{len(self.tokens)}")
            except Refused as exc:
                if exc.code == "not_permitted":
                    assert issuer != owner, f"{owner} was refused a token of their own"
                    _assert_refusal_audited(since, f"{issuer}'s token for {owner}")
                return
            except DomainError:
                return
        assert issuer == owner or owner == CI, f"{issuer} made a token that acts as {owner}"
        self.tokens.append({"pk": token.pk, "raw": raw, "owner": owner, "issuer": issuer,
                            "own_at": own_at})

    @rule(name=st.sampled_from(["QA", "Qa", "qa", "CAB", "Cab"]))
    def operator_issues_token(self, name):
        """``manage.py issue_token QA``: the name in another case is the same person."""
        out = io.StringIO()
        try:
            call_command("issue_token", name, "--name", f"sm-cli-{len(self.tokens)}",
                         stdout=out)
        except CommandError:
            return  # no account of that spelling (before usernames had one)
        raw = out.getvalue().strip()
        token = ApiToken.objects.select_related("user").get(token_hash=hash_token(raw))
        assert token.user.username.lower() == name.lower(), (
            f"issue_token {name} made a token of {token.user.username}")
        self.tokens.append({"pk": token.pk, "raw": raw, "owner": token.user.username,
                            "issuer": "operator", "own_at": None})

    @precondition(lambda self: self.tokens)
    @rule(pick=st.integers(0, 50), right=st.sampled_from([True, True, True, False]))
    def steps_up_through_token(self, pick, right):
        self._token_step_up(self.tokens[pick % len(self.tokens)], right=right)

    @precondition(lambda self: self.tokens)
    @rule(which=st.integers(0, 50), pick=st.integers(0, 50), gate=st.integers(0, 3),
          reject=st.sampled_from([False, False, False, True]))
    def decides_with_token(self, which, pick, gate, reject):
        """A script decides a gate with a token, on the version it was handed."""
        change = self._change(pick)
        if change is None:
            return
        token = self.tokens[which % len(self.tokens)]
        roles = [g.role for g in change.gates.all()] or [GateRole.BUSINESS]
        self._decide(change.pk, token["owner"], roles[gate % len(roles)], reject=reject,
                     token=token)

    @precondition(lambda self: self.tokens)
    @rule(which=st.integers(0, 50), pick=st.integers(0, 50))
    def deploys_with_token(self, which, pick):
        change = self._change(pick, ChangeRequest.Status.APPROVED)
        if change is not None:
            token = self.tokens[which % len(self.tokens)]
            self._press_deploy(change, token["owner"], token=token)

    # --- CI, the admin, Alertmanager, sign-in ----------------------------------------

    @rule(pick=st.integers(0, 50), whom=st.integers(0, 9),
          field=st.sampled_from(["authors", "mergers"]),
          spelling=st.sampled_from(sorted(SPELLINGS)))
    def ci_reports_authors_late(self, pick, whom, field, spelling):
        """CI reports, after the decisions and before the start, that someone who approved
        wrote or merged commits of the release (spelled as CI spells it)."""
        change = self._change(pick, ChangeRequest.Status.PENDING_APPROVAL,
                              ChangeRequest.Status.APPROVED)
        if change is None:
            return
        names = sorted(set(Approval.objects.filter(change_id=change.pk,
                                                   withdrawn_at__isnull=True)
                           .values_list("approver__username", flat=True))) or PEOPLE
        name = SPELLINGS[spelling](names[whom % len(names)])
        with self._hook("ci"):
            hooks.release_checks_record(actor=_user(CI), release=change.release,
                                        **{field: [name]})

    @rule(what=st.sampled_from(["executor_settings", "target"]),
          env=st.sampled_from(ENVIRONMENTS))
    def admin_edits_what_runs(self, what, env):
        """An administrator changes the executor's settings or a target in the admin."""
        if self.admin_client is None:
            self.admin_client = Client(REMOTE_ADDR=ADDRESS)
            self.admin_client.force_login(_user(ADMIN))
        app = Application.objects.get(slug="storefront")
        if what == "executor_settings":
            changed = dict(app.executor_settings or {})
            analysis = dict(changed.get("analysis") or {})
            analysis["samples"] = 30 if analysis.get("samples") != 30 else 20
            changed["analysis"] = analysis
            url = reverse("admin:catalog_application_change", args=[app.pk])
            data = {"slug": app.slug, "name": app.name, "repository_url": app.repository_url,
                    "team": app.team, "executor": app.executor,
                    "executor_settings": json.dumps(changed)}
        else:
            target = (Target.objects.filter(application=app, environment__slug=env)
                      .order_by("name").first())
            if target is None:
                return
            url = reverse("admin:catalog_target_change", args=[target.pk])
            data = {"application": app.pk, "environment": target.environment_id,
                    "name": target.name,
                    "address": "localhost" if target.address != "localhost" else "127.0.0.1"}
        # The admin's own transaction commits in production; here its after-commit work
        # (the approval workflow hearing of the edit) runs at the end of the request.
        with TestCase.captureOnCommitCallbacks(execute=True):
            response = self.admin_client.post(url, {**data, "_save": "Save"})
        assert response.status_code < 500, f"the admin's save answered {response.status_code}"

    @rule(sender=st.sampled_from(["engineer", "oncall", "oncall", "hook"]),
          env=st.sampled_from(ENVIRONMENTS), again=st.sampled_from([False, False, True]),
          step_up=st.sampled_from([True, False]))
    def alert_fires(self, sender, env, again, step_up):
        """Alertmanager asks for a rollback of the storefront, with an engineer's or
        on-call's token, or signed with the hook's secret; ``again``: the last alert sent
        once more (a refused one is not remembered, so a permitted sender still acts)."""
        if not again or not self.alerts:
            self.alerts += 1
        alert = {"status": "firing", "startsAt": "2026-12-07T10:00:00Z",
                 "fingerprint": f"sm{self.alerts:04d}{env}",
                 "labels": {"alertname": "HighErrorRate", "action": hooks.ROLLBACK_ACTION,
                            "application": "storefront", "environment": env},
                 "annotations": {"summary": "errors are up"}}
        if sender == "hook":
            actor, token, acting, fresh = _user(CI), None, self._hook("alertmanager"), False
        else:
            token = self._token_of(sender)
            if step_up:
                self._token_step_up(token)
            actor, acting, fresh = _user(sender), self._acting(sender, token), self._fresh(
                sender, token)
        since = _last_event()
        with acting:
            outcomes = hooks.alerts_receive(actor=actor, payload={"status": "firing",
                                                                  "alerts": [alert]})
        for outcome in outcomes:
            if outcome["outcome"] == "refused":
                _assert_refusal_audited(since, f"the alert sent by {sender}")
            if outcome["outcome"] == "rolled_back" and outcome.get("rollback_deployment"):
                self.pressed[outcome["rollback_deployment"]] = (
                    "token" if token else "hook", fresh)

    @rule(name=st.sampled_from(["QA", "Qa", "qa", "CAB"]))
    def signs_in(self, name):
        """A password sign-in with the name in any case is that person or nobody."""
        request = RequestFactory(REMOTE_ADDR=ADDRESS).post("/accounts/login/")
        user = authenticate(request, username=name, password=PASSWORD)
        if user is not None:
            assert user.get_username() == name.lower(), (
                f"signing in as {name} signed in {user.get_username()}")

    # --- the invariant ---------------------------------------------------------

    @invariant()
    def every_deployment_passed_the_controls(self):
        for deployment in (Deployment.objects.exclude(pk__in=self.seen_deployments)
                           .select_related("environment", "started_by")):
            self.seen_deployments.add(deployment.pk)
            if deployment.kind == Deployment.Kind.ROLLBACK:
                _assert_rollback_allowed(deployment, self.pressed.get(deployment.pk))
            else:
                _assert_change_allowed(deployment, self)


def _seen(shown: str) -> dict:
    """The fingerprint argument of a decision: what the approver was shown."""
    return {"seen": shown}


def _assert_own_fresh_check(pressed: tuple[str, bool] | None, what: str) -> None:
    """In Production, what a person pressed was pressed with their own fresh check."""
    if pressed is None:
        return  # started by the portal itself (the last approval, the schedule)
    road, fresh = pressed
    if road == "hook":
        return  # a signed hook acts as its service account, which holds no factor
    assert fresh, (f"{what} without a fresh check of the person's own second factor "
                   f"(through a {road})")


def _assert_rollback_allowed(deployment: Deployment, pressed) -> None:
    if deployment.started_by is None:
        return  # the engine's automatic rollback on failing health (no person)
    assert _holds(deployment.started_by.username, "rollback", deployment.environment), (
        f"rollback #{deployment.pk} was started by {deployment.started_by} without `rollback`")
    if deployment.environment.production:
        _assert_own_fresh_check(pressed, f"{deployment.started_by} rolled back "
                                         f"#{deployment.pk} in Production")


def _assert_change_allowed(deployment: Deployment, machine: ControlsMachine) -> None:
    env = deployment.environment
    assert deployment.started_by is not None, (
        f"deployment #{deployment.pk} names nobody who started it")
    starter = deployment.started_by.username
    assert _holds(starter, "deploy", env), (
        f"deployment #{deployment.pk} to {env.slug} was started by {starter}, "
        "who does not hold `deploy` there")
    change = ChangeRequest.objects.with_related().get(pk=deployment.change_id)
    barred_now = _barred(change)
    current = approvals.fingerprint(change)
    ran = _inputs_ran(deployment)
    people = []
    for gate in change.gates.all():
        standing = list(gate.approvals.filter(decision=Approval.Decision.APPROVED,
                                              withdrawn_at__isnull=True)
                        .select_related("approver", "on_behalf_of"))
        assert gate.status == Gate.Status.APPROVED and len(standing) >= gate.required, (
            f"{change.reference} deployed with its {gate.role} gate {gate.status}")
        for approval in standing:
            who = approval.approver.username
            people.append(who)
            decided = machine.decided.get(approval.pk)
            assert decided is not None, f"{who}'s approval came from nowhere the test knows"
            # Barred as known when they decided, and as known when it started (CI may
            # report authors and mergers after the decision).
            barred = decided.barred | barred_now
            assert not _is_barred(who, barred), (
                f"{who} approved {change.reference}, which they are barred from "
                f"({sorted(barred)})")
            if approval.on_behalf_of is not None:
                assert not _is_barred(approval.on_behalf_of.username, barred), (
                    f"{who} approved {change.reference} standing in for "
                    f"{approval.on_behalf_of.username}, who is barred from it")
            eligible = machine.expected_eligible.get((approval.pk, who))
            assert eligible is not None and eligible[0], (
                f"{who}'s approval of the {gate.role} gate was not eligible when given")
            for part in approvals.CONCERNS:
                if gate.role in approvals.CONCERNS[part]:
                    assert approval.fingerprint.get(part) == current[part], (
                        f"{change.reference} deployed with its {part} changed since "
                        f"{who} approved the {gate.role} gate")
            for part in ("executor", "targets"):
                if gate.role in approvals.CONCERNS[part]:
                    assert decided.inputs[part] == ran[part], (
                        f"{change.reference} ran with its {part} changed since {who} "
                        f"approved the {gate.role} gate: {decided.inputs[part]} then, "
                        f"{ran[part]} run")
            if env.production:
                _assert_own_fresh_check((decided.via, decided.fresh),
                                        f"{who} approved the Production {gate.role} gate "
                                        f"of {change.reference}")
            assert not accounts.is_service_account(approval.approver), (
                f"the service account {who} decided the {gate.role} gate of "
                f"{change.reference}")
    assert len(people) == len(set(people)), (
        f"one person decided two gates of {change.reference}: {people}")
    if env.production:
        _assert_own_fresh_check(machine.pressed.get(deployment.pk),
                                f"{starter} deployed {change.reference} to Production")


def _production_runs_a_release(demo) -> None:
    """Production already runs a release of the storefront (an emergency change taken
    through by the operator's hand), so a rollback has something to go back to."""
    change = approvals.change_request_create(
        actor=demo.engineer, release=ReleaseFactory(),
        environment=Environment.objects.get(slug="production"),
        change_type=ChangeType.EMERGENCY, rollback_plan=PLANS[0], on_call=demo.oncall)
    approvals.gate_approve(actor=demo.oncall, change=change, role=GateRole.EMERGENCY)
    for item in change.checklist.filter(done=False):
        if not item.automatic:
            approvals.checklist_item_set(actor=demo.oncall, change=change, item_id=item.pk,
                                         done=True, note="checked")
    deployment = approvals.change_request_deploy(actor=demo.oncall, change=change)
    with transaction.atomic():
        engine.deployment_finish(deployment=Deployment.objects.select_for_update(of=("self",))
                                 .select_related("environment").get(pk=deployment.pk),
                                 status=Deployment.Status.SUCCEEDED)
    assert Deployment.objects.get(pk=deployment.pk).status == Deployment.Status.SUCCEEDED


@pytest.mark.django_db
def test_no_sequence_of_actions_deploys_around_the_controls(demo):
    get_user_model().objects.create(username="dana")  # a delegate who holds nothing
    demo.outsider  # noqa: B018 - someone who holds nothing at all
    _production_runs_a_release(demo)
    run_state_machine_as_test(
        ControlsMachine,
        settings=hypothesis_settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
            suppress_health_check=list(HealthCheck), database=None,
            derandomize=os.environ.get("CI") == "true"),
    )
