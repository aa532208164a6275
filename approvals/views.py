"""Pages of the approval workflow: inbox, change request form, change page."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.html import format_html_join
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.utils.safestring import SafeString
from django.utils.text import capfirst
from django.views.decorators.http import require_POST

from approvals import checks, conflicts, eligibility, risk, risk_selectors, selectors, services
from approvals.models import (
    ChangeRequest,
    ChangeType,
    Delegation,
    Freeze,
    Gate,
    GateRole,
    MaintenanceWindow,
    PostImplementationReview,
    Risk,
    Strategy,
)
from audit.models import AuditEvent
from catalog import services as catalog_services
from catalog.models import Application, Environment, MigrationKind, Release
from catalog.permissions import environment_permissions
from configuration.selectors import digests_for_many
from core import clock, logcontext, paging
from core.errors import ChangedSinceViewed, DomainError, SecondFactorRequired, StepUpRequired
from deployments import selectors as deployment_selectors
from deployments.models import Deployment
from identity import stepup_views

# Gates on one page of the approvals inbox.
INBOX_PAGE_SIZE = 25
CHANGE_LIST_PAGE_SIZE = 50


class ChangeRequestForm(forms.Form):
    release = forms.ModelChoiceField(
        queryset=Release.objects.select_related("application").order_by(
            "application__name", "-created_at"),
        help_text="The application version to deploy.",
    )
    environment = forms.ModelChoiceField(queryset=Environment.objects.order_by("order"),
                                         to_field_name="slug")
    change_type = forms.ChoiceField(choices=ChangeType.choices, initial=ChangeType.STANDARD)
    strategy = forms.ChoiceField(choices=Strategy.choices, initial=Strategy.ALL_AT_ONCE)
    risk = forms.ChoiceField(choices=[("", "—"), *Risk.choices], required=False)
    impact = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    rollback_plan = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                                    help_text="How to return to the previous version (SOP 8.2).")
    on_call = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True).order_by("username"),
        to_field_name="username", required=False, help_text="On-call engineer for this change.")
    scheduled_for = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Optional: start by itself at this time (UTC) once approved and ready.")
    deploy_when_approved = forms.BooleanField(
        required=False, label="Deploy when approved",
        help_text="Start the deployment as you once the last gate approves; needs "
                  "permission to deploy to the environment.")


def _apply_domain_error(form: forms.Form, exc: DomainError) -> None:
    if exc.fields:
        for name, errors in exc.fields.items():
            form.add_error(name if name in form.fields else None, errors)
    else:
        form.add_error(None, exc.detail)


@login_required
def change_new(request):
    initial = {}
    if request.GET.get("release", "").isdigit():
        initial["release"] = request.GET["release"]
    form = ChangeRequestForm(request.POST or None, initial=initial)
    # Only the releases this person may see are offered (and accepted).
    form.fields["release"].queryset = deployment_selectors.releases_visible_to(
        request.user, queryset=form.fields["release"].queryset)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            change = services.change_request_create(actor=request.user, **data)
        except (StepUpRequired, SecondFactorRequired) as exc:
            return stepup_views.answer(request, exc)
        except DomainError as exc:
            _apply_domain_error(form, exc)
        else:
            messages.success(request, f"{change.reference} submitted for approval.")
            return redirect("change-detail", pk=change.pk)
    return render(request, "approvals/change_form.html", {"form": form},
                  status=400 if form.errors else 200)


@login_required
def change_list(request):
    """Changes newest first, a page at a time, filtered by application, environment and
    status ("waiting": for approval, a time or someone to deploy)."""
    filters = {k: request.GET.get(k, "") for k in ("application", "environment", "status")}
    changes = selectors.changes_listed(request.user, **filters)
    page = paging.keyset_page(changes, paging.position(request), CHANGE_LIST_PAGE_SIZE)
    return render(request, "approvals/change_list.html", {
        "changes": page.rows,
        "page": page,
        "query": paging.query_without_position(request),
        "filters": filters,
        "filtered": any(filters.values()),
        "applications": Application.objects.order_by("name"),
        "environments": Environment.objects.order_by("order"),
        "statuses": ChangeRequest.Status.choices,
    })


# Deadlines (docs/cab.md): less than this left shows in the warning style.
DEADLINE_SOON = timedelta(hours=24)


def _deadlines(change: ChangeRequest, now) -> list[dict]:
    """"Approve by" (the earliest pending gate's) and "Start by", while they apply."""
    shown = []
    due = [g.expires_at for g in change.gates.all()
           if g.status == Gate.Status.PENDING and g.expires_at is not None]
    if change.status == ChangeRequest.Status.PENDING_APPROVAL and due:
        shown.append({"label": "Approve by", "at": min(due)})
    if change.execute_by and change.status in (ChangeRequest.Status.APPROVED,
                                               ChangeRequest.Status.SCHEDULED):
        shown.append({"label": "Start by", "at": change.execute_by})
    for deadline in shown:
        deadline["soon"] = deadline["at"] - now < DEADLINE_SOON
    return shown


def _change_context(request, change: ChangeRequest) -> dict:
    user = request.user
    held = environment_permissions(user).get(change.environment_id, set())
    # Who may decide which gate, and why not: the one answer (approvals.eligibility).
    now = timezone.now()
    person = selectors.person_facts(user, at=now)
    verdicts = eligibility.gate_verdicts(person=person, change=change, at=now)
    deployment = None
    if change.latest_deployment_id:
        deployment = (Deployment.objects.select_related("release", "environment")
                      .prefetch_related("steps").get(pk=change.latest_deployment_id))
    live = [a for g in change.gates.all() for a in g.approvals.all() if not a.withdrawn_at]
    can_decide = {g.role for g in change.gates.all() if verdicts[g.pk].eligible}
    for g in change.gates.all():
        # A gate the person could decide but for a conflict with this change says why.
        g.why_not = verdicts[g.pk].detail if verdicts[g.pk].code in (
            eligibility.AUTHOR, eligibility.MERGER, eligibility.DELEGATE_CONFLICT,
            eligibility.ONE_GATE) else ""
    can_withdraw = {
        a.gate.role for a in live
        if a.approver_id == user.pk and a.decision == "approved"
        and change.status in (ChangeRequest.Status.PENDING_APPROVAL,
                              ChangeRequest.Status.APPROVED, ChangeRequest.Status.SCHEDULED)
    } if live else set()
    rules = selectors.rules_for([change])
    blockers = selectors.change_blockers(change, rules=rules)
    if change.status in (ChangeRequest.Status.PENDING_APPROVAL, ChangeRequest.Status.DRAFT):
        blockers += selectors.unsatisfiable_gates(change)
    earliest = None
    if any(b.code in selectors.TIME_CODES for b in blockers):
        earliest = selectors.earliest_deploy_time(change, rules=rules)
    checklist = []
    for item in change.checklist.all():
        done, why = checks.evaluate(item, change, rules)
        checklist.append({"item": item, "done": done, "why": why})
    may_tick = services.may_tick_checklist(user, change, person=person)
    timeline = AuditEvent.objects.filter(object_type="changerequest",
                                         object_id=str(change.pk)).order_by("id")
    review = PostImplementationReview.objects.filter(change=change).first()
    migrations = change.release.migration_plan or []
    return {
        # DESIGN.md section 8: CAB sees before approving whether this release can be
        # rolled back, and on-call sees to which versions it is safe to return.
        "migrations": migrations,
        "irreversible": [m.get("name", "") for m in migrations
                         if m.get("kind") == MigrationKind.IRREVERSIBLE],
        "rollback_options": deployment_selectors.rollback_options(
            change.release.application, change.environment),
        "change": change,
        "deadlines": _deadlines(change, clock.now()),
        # What this page shows, sent back with a decision (approve what you saw).
        "version_shown": services.change_version(change),
        "blockers": blockers,
        "conflicts": conflicts.seen_by(rules.conflicts.get(change.pk, []),  # conflicts
                                       conflicts.visible_environments(user)),
        "earliest": earliest,
        "deployment": deployment,
        # Queued behind another deployment of the application there: where it stands.
        "queue": deployment_selectors.queue_state(deployment) if deployment else None,
        "can_deploy": "deploy" in held,
        "can_decide": can_decide,
        "can_withdraw": can_withdraw,
        "can_cancel": change.status in ChangeRequest.OPEN and services.may_cancel(user, change),
        "can_edit": change.status in ChangeRequest.OPEN and change.requested_by_id == user.pk,
        "checklist": checklist,
        "may_tick": may_tick,
        "timeline": timeline,
        "review": review,
        "can_close_review": review is not None and not review.closed_at
        and eligibility.review_verdict(person=person, change=change, at=now).eligible,
        # Risk (docs/cab.md): the current assessment, its factors, why a gate was added.
        **risk_selectors.risk_summary(change),
    }


@login_required
def change_detail(request, pk: int):
    change = get_object_or_404(selectors.changes_visible_to(request.user), pk=pk)
    # The approval-quality report tells a decision made after reading from one made blind.
    services.change_view_record(change=change, user=request.user)
    return render(request, "approvals/change_detail.html", _change_context(request, change))


@login_required
@require_POST
@logcontext.bind_from_url(change_id="pk")
def gate_decide(request, pk: int, role: str):
    change = get_object_or_404(selectors.changes_visible_to(request.user), pk=pk)
    decision = request.POST.get("decision")
    comment = request.POST.get("comment", "")
    # The version of the change the page showed: a page always sends it (a form
    # without it decides on nothing), so a decision never lands on a change that moved.
    seen = request.POST.get("fingerprint", "")[:64]
    error = stale = None
    try:
        if decision == "reject":
            services.gate_reject(actor=request.user, change=change, role=role, comment=comment,
                                 seen=seen)
        elif decision == "approve":
            services.gate_approve(actor=request.user, change=change, role=role,
                                  comment=comment, seen=seen)
        else:
            error = "Choose approve or reject."
    except (StepUpRequired, SecondFactorRequired) as exc:
        return stepup_views.answer(request, exc)
    except DomainError as exc:
        error = exc.detail
        stale = exc.code == ChangedSinceViewed.code
    change = selectors.change_detail_queryset().get(pk=pk)
    gate = next((g for g in change.gates.all() if g.role == role), None)
    if request.htmx:
        # After a refusal the card offers the form again for what it still shows, unless
        # the change moved: then only opening it again shows what there is to decide.
        return render(request, "approvals/_decision_result.html", {
            "change": change, "gate": gate, "error": error, "role": role,
            "stale": stale, "version_shown": seen,
        }, status=200)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, f"Your decision on {change.reference} is recorded.")
    next_url = request.POST.get("next", "")
    if next_url and url_has_allowed_host_and_scheme(next_url, {request.get_host()}):
        return redirect(next_url)
    return redirect("change-detail", pk=pk)


@login_required
@require_POST
@logcontext.bind_from_url(change_id="pk")
def change_deploy(request, pk: int):
    change = get_object_or_404(selectors.changes_visible_to(request.user), pk=pk)
    try:
        deployment = services.change_request_deploy(actor=request.user, change=change)
    except (StepUpRequired, SecondFactorRequired) as exc:
        return stepup_views.answer(request, exc)
    except DomainError as exc:
        messages.error(request, exc.detail)
    else:
        queue = deployment_selectors.queue_state(deployment)
        if queue["position"] is not None:
            messages.success(request, f"Deployment #{deployment.pk} queued behind deployment "
                                      f"#{queue['waiting_for']} (position {queue['position']});"
                                      " it starts when its turn comes.")
        else:
            messages.success(request, f"Deployment #{deployment.pk} queued.")
    return redirect("change-detail", pk=pk)


@login_required
@require_POST
@logcontext.bind_from_url(change_id="pk")
def change_submit(request, pk: int):
    change = get_object_or_404(selectors.changes_visible_to(request.user), pk=pk)
    error = None
    try:
        services.change_request_submit(actor=request.user, change=change)
    except DomainError as exc:
        error = exc.detail
    return _back_to_change(request, pk, error, f"{change.reference} submitted for approval.")


@login_required
@require_POST
@logcontext.bind_from_url(change_id="pk")
def change_cancel(request, pk: int):
    change = get_object_or_404(selectors.changes_visible_to(request.user), pk=pk)
    try:
        services.change_request_cancel(actor=request.user, change=change,
                                       reason=request.POST.get("reason", "")[:2000])
    except DomainError as exc:
        messages.error(request, exc.detail)
    else:
        messages.success(request, f"{change.reference} cancelled.")
    return redirect("change-detail", pk=pk)


@login_required
def inbox(request):
    environment = request.GET.get("environment", "")
    change_type = request.GET.get("change_type", "")
    # One page of gates at a time: the page costs the same however many wait.
    person = selectors.person_facts(request.user)  # read once for the whole page
    page = Paginator(selectors.inbox_gates(request.user, environment=environment,
                                           change_type=change_type, person=person),
                     INBOX_PAGE_SIZE).get_page(request.GET.get("page"))
    gates = list(page.object_list)
    # What else stands in the way of each change, so an approver knows whether their
    # decision is the last thing it waits for.
    changes = [gate.change for gate in gates]
    # Conflicts too, detected once for the blockers and the badges (none on no page).
    rules = selectors.rules_for(changes) if changes else None
    blockers = selectors.blockers_for_many(changes, rules=rules)
    digests = digests_for_many(changes)
    inputs = services.run_inputs_for_many(changes)
    assessed = risk_selectors.latest_risk_for_many(changes)  # risk (docs/cab.md)
    found = rules.conflicts if rules else {}  # conflicts, for all the cards at once
    visible = conflicts.visible_environments(request.user)
    for gate in gates:
        gate.deadline_soon = bool(gate.expires_at and
                                  gate.expires_at - clock.now() < DEADLINE_SOON)
        found_risk = assessed.get(gate.change.pk)
        gate.change.risk_score = found_risk.score if found_risk else None
        gate.change.risk_band = risk.band(gate.change.risk_score)
        gate.conflicts = conflicts.seen_by(found.get(gate.change.pk, []), visible)
        # The badge's tooltip, one reason a line: joined here, not by a template loop
        # (two dozen conflicts a card are a thousand template nodes a page).
        gate.conflicts_title = format_html_join(SafeString("&#10;"), "{}", (
            (capfirst(c.reason),) for c in gate.conflicts))
        gate.other_blockers = [b for b in blockers[gate.change.pk]
                               if b.code != f"gate_{gate.role}"]
        # The version the card shows, sent back with the decision.
        key = (gate.change.release.application_id, gate.change.environment_id)
        gate.change.version_shown = services.change_version(gate.change, digests=digests[key],
                                                            inputs=inputs[key])
    query = urlencode({k: v for k, v in (("environment", environment),
                                          ("change_type", change_type)) if v})
    return render(request, "approvals/inbox.html", {
        "gates": gates,
        "page": page,
        "query": query,
        "reviews": selectors.open_reviews(request.user, person=person)[:50],
        "environments": Environment.objects.order_by("order"),
        "change_types": ChangeType.choices,
        "selected": {"environment": environment, "change_type": change_type},
    })


def _back_to_change(request, pk: int, error: str | None, ok: str):
    if error:
        messages.error(request, error)
    else:
        messages.success(request, ok)
    return redirect("change-detail", pk=pk)


@login_required
@require_POST
@logcontext.bind_from_url(change_id="pk")
def approval_withdraw(request, pk: int, role: str):
    change = get_object_or_404(selectors.changes_visible_to(request.user), pk=pk)
    error = None
    try:
        services.approval_withdraw(actor=request.user, change=change, role=role,
                                   reason=request.POST.get("reason", "")[:300])
    except DomainError as exc:
        error = exc.detail
    return _back_to_change(request, pk, error, "Your approval is withdrawn.")


@login_required
@require_POST
@logcontext.bind_from_url(change_id="pk")
def checklist_tick(request, pk: int, item_id: int):
    change = get_object_or_404(selectors.changes_visible_to(request.user), pk=pk)
    error = None
    try:
        services.checklist_item_set(actor=request.user, change=change, item_id=item_id,
                                    done=request.POST.get("done") == "1",
                                    note=request.POST.get("note", "")[:2000])
    except DomainError as exc:
        error = exc.detail
    if request.htmx:
        change = selectors.change_detail_queryset().get(pk=pk)
        item = next((i for i in change.checklist.all() if i.pk == item_id), None)
        if item is None:
            return render(request, "approvals/_checklist_item.html",
                          {"error": error or "No such item."}, status=200)
        done, why = checks.evaluate(item, change)
        return render(request, "approvals/_checklist_item.html", {
            "change": change, "row": {"item": item, "done": done, "why": why},
            "may_tick": services.may_tick_checklist(request.user, change), "error": error})
    return _back_to_change(request, pk, error, "Checklist updated.")


class ChangeEditForm(forms.Form):
    strategy = forms.ChoiceField(choices=Strategy.choices)
    risk = forms.ChoiceField(choices=[("", "—"), *Risk.choices], required=False)
    impact = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    rollback_plan = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    on_call = ChangeRequestForm.base_fields["on_call"]
    scheduled_for = ChangeRequestForm.base_fields["scheduled_for"]


@login_required
@logcontext.bind_from_url(change_id="pk")
def change_edit(request, pk: int):
    change = get_object_or_404(selectors.changes_visible_to(request.user), pk=pk)
    initial = {"strategy": change.strategy, "risk": change.risk, "impact": change.impact,
               "rollback_plan": change.rollback_plan,
               "on_call": change.on_call.username if change.on_call_id else None,
               "scheduled_for": change.scheduled_for}
    form = ChangeEditForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        changed = {k: v for k, v in form.cleaned_data.items() if v != initial.get(k)
                   and not (k == "on_call" and v and initial["on_call"] == v.username)}
        try:
            if changed:
                services.change_request_update(actor=request.user, change=change, **changed)
        except (StepUpRequired, SecondFactorRequired) as exc:
            return stepup_views.answer(request, exc)
        except DomainError as exc:
            _apply_domain_error(form, exc)
        else:
            messages.success(request, "Change updated. Approvals whose concern changed were "
                                      "reopened." if changed else "Nothing changed.")
            return redirect("change-detail", pk=pk)
    return render(request, "approvals/change_edit.html", {"form": form, "change": change},
                  status=400 if form.errors else 200)


@login_required
def calendar(request):
    """Scheduled changes, maintenance windows and freezes, environment by environment."""
    from datetime import timedelta

    from django.utils import timezone

    from approvals import schedule

    now = timezone.now()
    horizon = now + timedelta(days=14)
    environments = list(Environment.objects.order_by("order"))
    windows = list(MaintenanceWindow.objects.all())
    freezes = list(Freeze.objects.all())
    scheduled = list(selectors.changes_visible_to(request.user)
                     .filter(scheduled_for__gte=now - timedelta(days=1),
                             scheduled_for__lte=horizon)
                     .order_by("scheduled_for"))
    rows = []
    for env in environments:
        env_windows = [w for w in windows if w.environment_id == env.pk]
        upcoming = sorted({span for w in env_windows for span in schedule.window_spans(w, now)
                           if span[1] > now and span[0] < horizon})
        env_freezes = sorted(
            {(start, end, f.reason) for f in freezes if f.environment_id == env.pk
             for start, end in schedule.freeze_spans(f, now) if end > now})
        rows.append({"environment": env, "windows": env_windows, "upcoming": upcoming[:6],
                     "freezes": env_freezes,
                     "changes": [c for c in scheduled if c.environment_id == env.pk]})
    return render(request, "approvals/calendar.html", {"rows": rows, "now": now})


class LockForm(forms.Form):
    reason = forms.CharField(max_length=300, help_text="Why, e.g. the incident number.")


@login_required
def environments(request):
    """Environment locks: on-call and admins lock and unlock with a reason."""
    held = environment_permissions(request.user)
    form = LockForm(request.POST or None)
    if request.method == "POST":
        env = get_object_or_404(Environment, slug=request.POST.get("environment", ""))
        try:
            if request.POST.get("action") == "unlock":
                catalog_services.environment_unlock(actor=request.user, environment=env)
                messages.success(request, f"{env.name} is unlocked.")
                return redirect("environments")
            if form.is_valid():
                catalog_services.environment_lock(actor=request.user, environment=env,
                                                  reason=form.cleaned_data["reason"])
                messages.success(request, f"{env.name} is locked.")
                return redirect("environments")
        except (StepUpRequired, SecondFactorRequired) as exc:
            return stepup_views.answer(request, exc)
        except DomainError as exc:
            messages.error(request, exc.detail)
            return redirect("environments")
    envs = [{"environment": e, "can_lock": "rollback" in held.get(e.pk, set()),
             "ssh": (e.deploy_settings or {}).get("ssh") or {}}
            for e in Environment.objects.order_by("order").prefetch_related("host_keys")]
    return render(request, "approvals/environments.html", {"envs": envs, "form": form},
                  status=400 if form.errors else 200)


class DelegationForm(forms.Form):
    environment = forms.ModelChoiceField(queryset=Environment.objects.order_by("order"),
                                         to_field_name="slug")
    role = forms.ChoiceField(choices=GateRole.choices, label="Gate")
    delegate = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True).order_by("username"),
        to_field_name="username")
    expires_at = forms.DateTimeField(widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
                                     help_text="At most 30 days ahead (UTC).")
    reason = forms.CharField(max_length=300, required=False)


@login_required
def delegations(request):
    form = DelegationForm(request.POST or None)
    if request.method == "POST" and request.POST.get("revoke", "").isdigit():
        delegation = get_object_or_404(Delegation, pk=int(request.POST["revoke"]))
        try:
            services.delegation_revoke(actor=request.user, delegation=delegation)
            messages.success(request, "Delegation revoked.")
        except DomainError as exc:
            messages.error(request, exc.detail)
        return redirect("delegations")
    if request.method == "POST" and form.is_valid():
        try:
            services.delegation_create(actor=request.user, **form.cleaned_data)
        except DomainError as exc:
            _apply_domain_error(form, exc)
        else:
            messages.success(request, "Delegation created.")
            return redirect("delegations")
    given = (Delegation.objects.filter(delegator=request.user)
             .select_related("delegate", "environment"))
    received = (Delegation.objects.filter(delegate=request.user)
                .select_related("delegator", "environment"))
    return render(request, "approvals/delegations.html", {
        "form": form, "given": given, "received": received},
        status=400 if form.errors else 200)


@login_required
@require_POST
@logcontext.bind_from_url(change_id="pk")
def review_close(request, pk: int):
    change = get_object_or_404(selectors.changes_visible_to(request.user), pk=pk)
    review = get_object_or_404(PostImplementationReview, change=change)
    error = None
    try:
        services.review_close(actor=request.user, review=review,
                              findings=request.POST.get("findings", "")[:5000])
    except (StepUpRequired, SecondFactorRequired) as exc:
        return stepup_views.answer(request, exc)
    except DomainError as exc:
        error = exc.detail
    return _back_to_change(request, pk, error, "Post-implementation review closed.")
