"""The world the state machine in test_state_machine.py acts in.

The cast and what they may be asked to do (people, names as CI spells them, the
requests they make), Production running a release before the story starts, and
``ControlsWorld``: the records a run keeps for the oracle and the roads people act
by (a signed-in session with their second-factor checks, an API token, a signed
hook), with the steps several rules share (deciding a gate, ticking the checklist,
pressing Deploy, the worker finishing a run).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from allauth.account.internal.flows.login import record_authentication
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import TOTP
from django.conf import settings
from django.contrib.sessions.backends.signed_cookies import SessionStore
from django.core.cache import cache
from django.db import transaction
from django.test import Client, RequestFactory
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine

from approvals import services as approvals
from approvals.models import Approval, ChangeRequest, ChangeType, GateRole
from audit.models import AuditEvent
from audit.trail import System
from catalog.models import Environment
from core import context
from core.context import RequestContext
from core.errors import ChangedSinceViewed, DomainError, Refused
from deployments import services as engine
from deployments.models import Deployment
from deployments.signals import deployment_finished
from identity import services as core_services
from identity.authentication import BearerTokenAuthentication
from integrations.hooks import HookCredential
from tests.conftest import totp_code
from tests.factories import ReleaseFactory
from tests.security.state_machine_oracle import (
    Decided,
    _assert_refusal_audited,
    _barred,
    _inputs_now,
    _last_event,
    _may_decide_now,
    _seen,
    _user,
)

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


class ControlsWorld(RuleBasedStateMachine):
    """What a run of ``ControlsMachine`` keeps and the roads its people act by."""

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

    def _tick(self, change: ChangeRequest, actor: str) -> None:
        for item in change.checklist.filter(done=False):
            if not item.automatic:
                with self._acting(actor):
                    self._try(approvals.checklist_item_set, actor=_user(actor), change=change,
                              item_id=item.pk, done=True, note="checked")

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

    def _finish(self, pk: int, outcome: str) -> None:
        with transaction.atomic():
            deployment = (Deployment.objects.select_for_update(of=("self",))
                          .select_related("environment").get(pk=pk))
            engine.deployment_finish(deployment=deployment, status=outcome,
                                     reason="" if outcome == "succeeded" else "step failed")
        deployment_finished.send(sender=Deployment, deployment=deployment, status=outcome)


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
