"""Random people doing random things: no sequence of actions ships around the controls.

A Hypothesis state machine drives the services (the single road every page, API call,
hook and beat task takes) with the demo cast plus people who hold nothing, delegates
and people who lose their permissions half-way. After every step it checks, from
the database, the invariant the SOP rests on:

    every deployment that exists was started by someone holding ``deploy`` (or, for a
    rollback, ``rollback``) on its environment, for a change whose gates were all
    approved by eligible, distinct people, none of them its requester, authors or
    mergers or standing in for them, on the fingerprint that was deployed.

Eligibility is judged by the test's own oracle at the moment of each decision (the
permission or a live delegation held then), not by asking the service.

``PORTAL_STATE_MACHINE_EXAMPLES`` sets how many runs (40 in ``make test``; the bench
and nightly settings use more, see docs/security.md).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, settings
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
from catalog.models import Environment
from core.errors import DomainError
from deployments import services as engine
from deployments.models import Deployment
from deployments.signals import deployment_finished
from tests.factories import ReleaseFactory

EXAMPLES = int(os.environ.get("PORTAL_STATE_MACHINE_EXAMPLES", "40"))
STEPS = int(os.environ.get("PORTAL_STATE_MACHINE_STEPS", "40"))

# The demo cast, a delegate who holds nothing of their own, and an outsider.
PEOPLE = ["engineer", "techlead", "qa", "cab", "cab2", "security", "business", "oncall",
          "dana", "outsider"]
# Group memberships the machine may take away and give back (people lose `deploy`).
MEMBERSHIPS = {"engineer": "engineers", "oncall": "on-call", "techlead": "tech-leads",
               "cab": "cab"}
ENVIRONMENTS = ["staging", "production"]
HOLDERS = {GateRole.TECH_LEAD: ["techlead", "dana"], GateRole.QA: ["qa"],
           GateRole.CAB: ["cab", "cab2"], GateRole.SECURITY: ["security"],
           GateRole.BUSINESS: ["business"], GateRole.EMERGENCY: ["oncall", "dana"]}
PLANS = ["Redeploy the previous release with the portal's rollback."] * 3 + [""]
# Who requests: mostly people who may, now and then someone who may not.
REQUESTERS = ["engineer", "engineer", "techlead", "oncall", "oncall", "cab", "dana"]
# What a request is made of: mostly self-starting ones, authored by one person or none.
REQUEST = dict(
    requester=st.sampled_from(REQUESTERS), env=st.sampled_from(ENVIRONMENTS),
    change_type=st.sampled_from(ChangeType.values), plan=st.sampled_from(PLANS),
    authors=st.lists(st.sampled_from(PEOPLE), max_size=1),
    mergers=st.lists(st.sampled_from(PEOPLE), max_size=1),
    deploy_when_approved=st.sampled_from([True, True, False]),
    scheduled=st.sampled_from([False, False, True]),
    on_call=st.sampled_from([None, "oncall", "engineer"]))


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


class ControlsMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        # Each run starts from the demo data and leaves nothing behind.
        self._savepoint = transaction.savepoint()
        self.changes: list[int] = []
        self.seen_deployments: set[int] = set()
        self.seen_approvals: set[int] = set()
        # approval id -> eligible (and on whose behalf) when the oracle last looked.
        self.expected_eligible: dict[tuple[int, str], tuple[bool, str | None]] = {}
        self.moved: dict[str, list] = {}

    def teardown(self):
        transaction.savepoint_rollback(self._savepoint)

    # --- helpers ---------------------------------------------------------------

    def _change(self, pick: int) -> ChangeRequest | None:
        if not self.changes:
            return None
        pk = self.changes[-1 - pick % len(self.changes)]  # the newest mostly
        return ChangeRequest.objects.with_related().get(pk=pk)

    def _try(self, call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except DomainError:
            return None

    # --- actions ---------------------------------------------------------------

    @initialize(**REQUEST)
    def first_request(self, **kwargs):
        self.create(**kwargs)

    @rule(**REQUEST)
    def create(self, requester, env, change_type, plan, authors, mergers,
               deploy_when_approved, scheduled, on_call):
        release = ReleaseFactory(authors=authors, mergers=mergers)
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
            approvals.change_request_update(actor=_user(actor), change=change,
                                            **{field: value})
        except (DomainError, TypeError):
            # TypeError: a field this version does not let anyone edit.
            return

    @rule(pick=st.integers(0, 50), actor=st.one_of(st.none(), st.sampled_from(PEOPLE)),
          gate=st.integers(0, 3),
          stale=st.sampled_from([False, False, True]),
          reject=st.sampled_from([False, False, False, True]))
    def decide(self, pick, actor, gate, stale, reject):
        change = self._change(pick)
        if change is None:
            return
        # One of the change's own gates mostly, now and then one it does not have.
        roles = [g.role for g in change.gates.all()] + [GateRole.BUSINESS]
        role = roles[gate % len(roles)]
        # None: whoever holds the gate in the demo (the search finds approvals sooner).
        # Stale: what a page opened before the last edit would send back.
        self._decide(change.pk, actor or HOLDERS[role][gate % len(HOLDERS[role])], role,
                     stale=stale, reject=reject)

    @rule(pick=st.integers(0, 50))
    def approvers_come_by(self, pick):
        """Each gate still pending gets a look from the people who usually decide it."""
        change = self._change(pick)
        if change is None:
            return
        for gate in change.gates.filter(status=Gate.Status.PENDING):
            for holder in HOLDERS[gate.role]:
                self._decide(change.pk, holder, gate.role)

    def _decide(self, change_pk, actor, role, stale=False, reject=False):
        change = ChangeRequest.objects.with_related().get(pk=change_pk)
        eligible = _may_decide_now(actor, change.environment, role)
        shown = "0" * 16 if stale else approvals.change_version(change)
        before = set(Approval.objects.filter(change=change).values_list("pk", flat=True))
        call = approvals.gate_reject if reject else approvals.gate_approve
        self._try(call, actor=_user(actor), change=change, role=role,
                  comment="Looked at it." if reject else "", **_seen(shown))
        for approval in Approval.objects.filter(change=change).exclude(pk__in=before):
            assert eligible[0], (f"{actor} decided the {role} gate of CR-{change.pk} "
                                 "without holding it")
            assert not stale, f"{actor}'s decision on a change they had not seen counted"
            self.expected_eligible[(approval.pk, actor)] = eligible

    @rule(pick=st.integers(0, 50), actor=st.sampled_from(PEOPLE),
          role=st.sampled_from(GateRole.values))
    def withdraw(self, pick, actor, role):
        change = self._change(pick)
        if change is not None:
            self._try(approvals.approval_withdraw, actor=_user(actor), change=change,
                      role=role, reason="second thoughts")

    @rule(delegator=st.sampled_from(PEOPLE), delegate=st.sampled_from(PEOPLE),
          env=st.sampled_from(ENVIRONMENTS), role=st.sampled_from(GateRole.values))
    def delegate(self, delegator, delegate, env, role):
        self._try(approvals.delegation_create, actor=_user(delegator),
                  environment=Environment.objects.get(slug=env), role=role,
                  delegate=_user(delegate), expires_at=timezone.now() + timedelta(days=1))

    @rule(actor=st.sampled_from(PEOPLE), pick=st.integers(0, 50))
    def revoke_delegation(self, actor, pick):
        delegations = list(Delegation.objects.filter(revoked_at__isnull=True).order_by("pk"))
        if delegations:
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

    @rule(pick=st.integers(0, 50), actor=st.sampled_from(PEOPLE))
    def tick_checklist(self, pick, actor):
        change = self._change(pick)
        if change is None:
            return
        for item in change.checklist.filter(done=False):
            if not item.automatic:
                self._try(approvals.checklist_item_set, actor=_user(actor), change=change,
                          item_id=item.pk, done=True, note="checked")

    @rule(pick=st.integers(0, 50), actor=st.sampled_from(PEOPLE))
    def deploy(self, pick, actor):
        change = self._change(pick)
        if change is not None:
            self._try(approvals.change_request_deploy, actor=_user(actor), change=change)

    @rule(pick=st.integers(0, 50), actor=st.sampled_from(PEOPLE))
    def cancel(self, pick, actor):
        change = self._change(pick)
        if change is not None:
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
        if not active:
            return
        with transaction.atomic():
            deployment = (Deployment.objects.select_for_update(of=("self",))
                          .select_related("environment").get(pk=active[pick % len(active)].pk))
            engine._finish(deployment, outcome, "" if outcome == "succeeded" else "step failed")
        deployment_finished.send(sender=Deployment, deployment=deployment, status=outcome)

    @rule(pick=st.integers(0, 50), actor=st.sampled_from(PEOPLE))
    def rollback(self, pick, actor):
        finished = list(Deployment.objects.filter(status=Deployment.Status.SUCCEEDED)
                        .order_by("pk"))
        if finished:
            self._try(engine.deployment_rollback, actor=_user(actor),
                      deployment=finished[pick % len(finished)], reason="errors are up")

    # --- the invariant ---------------------------------------------------------

    @invariant()
    def every_deployment_passed_the_controls(self):
        for deployment in (Deployment.objects.exclude(pk__in=self.seen_deployments)
                           .select_related("environment", "started_by")):
            self.seen_deployments.add(deployment.pk)
            if deployment.kind == Deployment.Kind.ROLLBACK:
                _assert_rollback_allowed(deployment)
            else:
                _assert_change_allowed(deployment, self.expected_eligible)


def _seen(shown: str) -> dict:
    """The fingerprint argument of a decision: what the approver was shown."""
    return {"seen": shown}


def _assert_rollback_allowed(deployment: Deployment) -> None:
    if deployment.started_by is None:
        return  # the engine's automatic rollback on failing health (no person)
    assert _holds(deployment.started_by.username, "rollback", deployment.environment), (
        f"rollback #{deployment.pk} was started by {deployment.started_by} without `rollback`")


def _assert_change_allowed(deployment: Deployment, expected_eligible) -> None:
    env = deployment.environment
    assert deployment.started_by is not None, (
        f"deployment #{deployment.pk} names nobody who started it")
    starter = deployment.started_by.username
    assert _holds(starter, "deploy", env), (
        f"deployment #{deployment.pk} to {env.slug} was started by {starter}, "
        "who does not hold `deploy` there")
    change = ChangeRequest.objects.with_related().get(pk=deployment.change_id)
    release = change.release
    barred = ({change.requested_by.username} | set(release.authors or [])
              | set(release.mergers or []))
    current = approvals.fingerprint(change)
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
            assert who not in barred, (
                f"{who} approved {change.reference}, which they are barred from")
            if approval.on_behalf_of is not None:
                assert approval.on_behalf_of.username not in barred, (
                    f"{who} approved {change.reference} standing in for "
                    f"{approval.on_behalf_of.username}, who is barred from it")
            eligible = expected_eligible.get((approval.pk, who))
            assert eligible is not None and eligible[0], (
                f"{who}'s approval of the {gate.role} gate was not eligible when given")
            for part in approvals.CONCERNS:
                if gate.role in approvals.CONCERNS[part]:
                    assert approval.fingerprint.get(part) == current[part], (
                        f"{change.reference} deployed with its {part} changed since "
                        f"{who} approved the {gate.role} gate")
    assert len(people) == len(set(people)), (
        f"one person decided two gates of {change.reference}: {people}")


@pytest.mark.django_db
def test_no_sequence_of_actions_deploys_around_the_controls(demo):
    get_user_model().objects.create(username="dana")  # a delegate who holds nothing
    demo.outsider  # noqa: B018 - someone who holds nothing at all
    run_state_machine_as_test(
        ControlsMachine,
        settings=settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                          suppress_health_check=list(HealthCheck), database=None,
                          derandomize=os.environ.get("CI") == "true"),
    )
