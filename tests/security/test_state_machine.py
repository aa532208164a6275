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

The cast and the roads people act by are in ``state_machine_world``, the oracle's
reading of the database in ``state_machine_oracle``.

``PORTAL_STATE_MACHINE_EXAMPLES`` sets how many runs (40 in ``make test``; the bench
and nightly settings use more, see docs/security.md).
"""

from __future__ import annotations

import io
import json
import os
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import F
from django.test import Client, RequestFactory, TestCase
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from approvals import services as approvals
from approvals.models import Approval, ChangeRequest, Delegation, Gate, GateRole
from catalog.models import Application, Environment, Target
from core.errors import Conflict, DomainError, Refused
from deployments import services as engine
from deployments.models import Deployment
from identity import accounts
from identity import services as core_services
from identity.models import ApiToken, hash_token
from integrations import hooks
from tests.conftest import PASSWORD
from tests.factories import ReleaseFactory
from tests.security.state_machine_oracle import (
    _assert_own_fresh_check,
    _assert_refusal_audited,
    _assert_rollback_allowed,
    _barred,
    _has_factor,
    _holds,
    _inputs_ran,
    _is_barred,
    _last_event,
    _user,
)
from tests.security.state_machine_world import (
    ADDRESS,
    ADMIN,
    CI,
    DECIDERS,
    ENVIRONMENTS,
    HOLDERS,
    ISSUERS,
    MEMBERSHIPS,
    PEOPLE,
    PLANS,
    PRODUCTION_REQUESTS,
    REQUEST,
    ROADS,
    SPELLINGS,
    TOKEN_OWNERS,
    ControlsWorld,
    _production_runs_a_release,
)

EXAMPLES = int(os.environ.get("PORTAL_STATE_MACHINE_EXAMPLES", "40"))
STEPS = int(os.environ.get("PORTAL_STATE_MACHINE_STEPS", "40"))


class ControlsMachine(ControlsWorld):
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
