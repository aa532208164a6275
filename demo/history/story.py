"""The stories the history tells: each release's way to production, emergencies, and the
changes waiting now, every step through the services as a person would take it."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

# The other apps' modules this generator drives, all here.
from approvals import schedule
from approvals import services as approval_services
from approvals.models import (
    ChangeRequest,
    ChangeType,
    ChecklistKind,
    Freeze,
    MaintenanceWindow,
    PostImplementationReview,
)
from approvals.policy import rows as policy_rows
from audit.access import admin_change_record
from audit.trail import audit_record
from catalog.models import Application, Environment, Release, Target
from core import clock as portal_clock
from demo.history.cab import CabStory
from demo.history.clock import LONDON, HistoryClock, Timeline, local, working
from demo.history.plan import (
    APPROVAL_COMMENTS,
    APPS,
    DAYS,
    NOTES,
    THINGS,
    AppPlan,
    History,
    start_of,
)
from demo.history.work import BAD_RELEASES, FAILING_STEPS, run_queued
from deployments import services as deployment_services
from deployments.models import Deployment
from integrations import hooks


def _artifact(slug: str, version: str) -> tuple[str, str]:
    """A small artifact in the portal's artifact store (the trusted source) and its SHA-256."""
    store = Path(settings.PORTAL_ARTIFACT_STORE)
    store.mkdir(parents=True, exist_ok=True)
    path = store / f"{slug}-{version}.json"
    path.write_text(json.dumps({"application": slug, "version": version}) + "\n")
    return path.as_uri(), hashlib.sha256(path.read_bytes()).hexdigest()


class Generator:
    def __init__(self, *, now: datetime, size: str = "full", seed: int = 2026) -> None:
        self.now = now
        self.small = size == "small"
        self.random = random.Random(seed)
        self.start = start_of(now)
        User = get_user_model()
        self.people = {u.username: u for u in User.objects.filter(username__in=[
            "engineer", "techlead", "qa", "cab", "cab2", "security", "business", "oncall",
            "ci-bot", "admin"])}
        self.envs = {e.slug: e for e in Environment.objects.all()}
        self.windows = list(MaintenanceWindow.objects.filter(
            environment=self.envs["production"]))
        self.timeline = Timeline()
        self.history = History()
        self.apps: dict[str, Application] = {}
        self.clock: HistoryClock | None = None
        self.scheduled_version = ""

    # -- helpers -----------------------------------------------------------------------

    def comment(self, role: str) -> str:
        return self.random.choice(APPROVAL_COMMENTS[role])

    def window_after(self, moment: datetime) -> datetime:
        """A quarter of an hour into the first production window after ``moment``."""
        if schedule.current_window(self.windows, moment):
            return moment
        return schedule.next_window_start(self.windows, moment) + timedelta(minutes=15)

    def change(self, app: Application, version: str, env: str) -> ChangeRequest | None:
        return (ChangeRequest.objects.filter(release__application=app, release__version=version,
                                             environment__slug=env).order_by("-id").first())

    def run(self, app: Application, env: str) -> list[Deployment]:
        ran = run_queued(app, self.envs[env])
        self.history.deployments += len(ran)
        return ran

    # -- the steps of a story ------------------------------------------------------------

    def push(self, app: Application, plan: AppPlan, version: str, notes: str,
             migration_plan: list | None) -> None:
        ci = self.people["ci-bot"]
        url, digest = _artifact(app.slug, version)
        committed_at = portal_clock.now() - timedelta(
            hours=plan.commit_lag_hours * self.random.uniform(0.7, 1.3))
        fields = dict(artifact_url=url, artifact_sha256=digest,
                      commit_sha=hashlib.sha1(f"{app.slug}{version}".encode()).hexdigest()[:12],
                      committed_at=committed_at, notes=notes)
        if migration_plan:
            # Registration takes no migration plan: such a release is registered the way
            # the demo data registers the storefront's 1.2.0, with its audit event.
            with transaction.atomic():
                release = Release.objects.create(application=app, version=version,
                                                 created_by=ci, migration_plan=migration_plan,
                                                 **fields)
                audit_record(actor=ci, action="release.registered", obj=release,
                             after={"version": version, "migration_plan": migration_plan})
        release, _, _, _ = hooks.push_deploy(
            actor=ci, application=app, version=version, ref="main", authors=["engineer"],
            **fields)
        self.history.changes += 1
        self.run(app, "development")
        for check in ("tests", "security_scan"):
            hooks.release_checks_record(actor=ci, release=release, check=check,
                                        status="passed", summary="all green")

    def request(self, app: Application, version: str, env: str, *, who: str = "engineer",
                **fields) -> ChangeRequest:
        release = Release.objects.get(application=app, version=version)
        change = approval_services.change_request_create(
            actor=self.people[who], release=release, environment=self.envs[env], **fields)
        self.history.changes += 1
        return change

    def decide(self, app: Application, version: str, env: str, role: str, who: str,
               comment: str = "", reject: bool = False) -> None:
        change = self.change(app, version, env)
        if change is None or change.status != ChangeRequest.Status.PENDING_APPROVAL:
            return
        seen = approval_services.change_version(change)
        # The approval-quality page's story (docs/cab.md): approvers open the
        # change before deciding, but business approves from the inbox, unopened.
        if role != "business":
            approval_services.change_view_record(change=change, user=self.people[who])
        if reject:
            approval_services.gate_reject(actor=self.people[who], change=change, role=role,
                                          comment=comment, seen=seen)
        else:
            approval_services.gate_approve(actor=self.people[who], change=change, role=role,
                                           comment=comment or self.comment(role), seen=seen)

    def tick_all(self, change: ChangeRequest | None, who: str, kinds=None) -> None:
        if change is None:
            return
        items = change.checklist.filter(auto_check="", done=False)
        if kinds:
            items = items.filter(kind__in=kinds)
        for item in items.order_by("kind", "position"):
            approval_services.checklist_item_set(
                actor=self.people[who], change=change, item_id=item.pk, done=True,
                note=self.random.choice(["", "checked", "see the runbook", "done on staging"]))

    def deploy(self, app: Application, version: str, env: str, who: str) -> None:
        change = self.change(app, version, env)
        if change is None or change.status != ChangeRequest.Status.APPROVED:
            return
        approval_services.change_request_deploy(actor=self.people[who], change=change)
        self.run(app, env)

    # -- one release's story -------------------------------------------------------------

    def release_story(self, app: Application, plan: AppPlan, n: int, version: str,
                      day: datetime, twist: str = "") -> None:
        add = self.timeline.add
        thing = self.random.choice(THINGS[app.slug])
        notes = self.random.choice(NOTES).format(thing=thing)
        migration_plan = None
        if plan.migrations and n % 2 == 0:
            migration_plan = [{"name": f"{40 + n:04d}_{thing.split()[0]}", "kind": "expand"}]
        t0 = local(day, 9 + self.random.randint(0, 6), self.random.randint(0, 59))
        add(t0, lambda: self.push(app, plan, version, notes, migration_plan))

        # Staging, the next working day or two.
        t1 = working(t0 + timedelta(hours=self.random.randint(20, 44)), self.random)
        strategy = "all_at_once" if plan.strategy == "canary" else plan.strategy
        add(t1, lambda: self.request(app, version, "staging", strategy=strategy, risk="low",
                                     impact=f"{app.name}: {notes}"))
        if twist == "qa_rejects":
            add(t1 + timedelta(hours=3), lambda: self.decide(
                app, version, "staging", "qa", "qa", reject=True,
                comment="Refund totals are off by one cent in the regression pack; "
                        "please fix before promotion."))
            return
        add(t1 + timedelta(hours=1, minutes=20),
            lambda: self.decide(app, version, "staging", "tech_lead", "techlead"))
        add(t1 + timedelta(hours=3, minutes=5),
            lambda: self.decide(app, version, "staging", "qa", "qa"))
        add(t1 + timedelta(hours=3, minutes=40),
            lambda: self.deploy(app, version, "staging", "engineer"))
        if twist == "staging_fails" or not plan.to_production:
            return

        # Production: a standard change in the next window, or a hotfix.
        t2 = working(t1 + timedelta(hours=self.random.randint(24, 60)), self.random)
        change_type = ChangeType.HOTFIX if twist == "hotfix" else ChangeType.STANDARD
        scheduled = twist == "scheduled"
        rollback_plan = (f"Roll back to the previous {app.name} release with the portal's "
                         "rollback; no data migration to undo.")
        fields = dict(change_type=change_type, strategy=plan.strategy,
                      rollback_plan=rollback_plan, risk="high" if twist == "canary_fails"
                      else self.random.choice(["low", "medium"]),
                      impact=f"{app.name} users: {notes}", on_call=self.people["oncall"])
        when = self.window_after(t2 + timedelta(hours=20))
        if scheduled:
            add(t2, lambda: self.request(app, version, "production", who="oncall",
                                         scheduled_for=when, **fields))
        else:
            add(t2, lambda: self.request(app, version, "production", **fields))
        roles = (["tech_lead", "cab"] if change_type == ChangeType.HOTFIX
                 else ["cab", "security", "business"])
        people = {"tech_lead": "techlead", "cab": self.random.choice(["cab", "cab2"]),
                  "security": "security", "business": "business"}
        for i, role in enumerate(roles):
            if scheduled and i == len(roles) - 1:
                # The last approval and the start at the scheduled time in one step, so
                # the beat of a running portal never finds this change due now.
                add(when - timedelta(hours=1), lambda role=role: self.approve_and_start(
                    app, version, role, people[role], when))
                break
            if twist == "security_rejects" and role == "security":
                add(t2 + timedelta(hours=2 + i * 2), lambda: self.decide(
                    app, version, "production", "security", "security", reject=True,
                    comment="The new HTTP client pulls a library with CVE-2026-1184 (high); "
                            "upgrade it and request again."))
                return
            add(t2 + timedelta(hours=2 + i * 2, minutes=self.random.randint(0, 50)),
                lambda role=role: self.decide(app, version, "production", role, people[role]))
        add(t2 + timedelta(hours=9), lambda: self.tick_prod(app, version))
        if scheduled:
            pass
        elif change_type == ChangeType.HOTFIX:
            add(t2 + timedelta(hours=10), lambda: self.deploy(app, version, "production",
                                                              "oncall"))
        else:
            add(when, lambda: self.deploy(app, version, "production", "oncall"))
        if twist == "canary_fails":
            # The fix, once the canary has been rolled back: a hotfix the next day.
            fix = f"{version.rsplit('.', 1)[0]}.1"
            add(when + timedelta(minutes=30), lambda: self.release_story(
                app, plan, n, fix, when + timedelta(days=1), "hotfix"))
        elif twist == "manual_rollback":
            add(when + timedelta(hours=1, minutes=40), lambda: self.roll_back(app))
        elif n % 4 != 3:
            # The SOP 13.2 compliance list, the morning after (a few are left for the
            # auditor to find).
            add(working(when + timedelta(hours=10), self.random),
                lambda: self.tick_compliance(app, version))

    def tick_compliance(self, app: Application, version: str) -> None:
        change = self.change(app, version, "production")
        if change is not None and change.status == ChangeRequest.Status.DEPLOYED:
            self.tick_all(change, "oncall", kinds=[ChecklistKind.COMPLIANCE])

    def tick_prod(self, app: Application, version: str) -> None:
        change = self.change(app, version, "production")
        if change is not None and change.status in ChangeRequest.OPEN:
            self.tick_all(change, "oncall")

    def approve_and_start(self, app: Application, version: str, role: str, who: str,
                          when: datetime) -> None:
        self.decide(app, version, "production", role, who)
        self.clock.at(when)
        approval_services.changes_start_scheduled(now=portal_clock.now())
        self.run(app, "production")

    def roll_back(self, app: Application) -> None:
        env = self.envs["production"]
        latest = (Deployment.objects.filter(application=app, environment=env,
                                            kind=Deployment.Kind.DEPLOY)
                  .order_by("-id").first())
        if latest is None or latest.status != Deployment.Status.SUCCEEDED:
            return
        deployment_services.deployment_rollback(
            actor=self.people["oncall"], deployment=latest,
            reason="Crash reports from the Android app doubled after the release; "
                   "rolling back while the team investigates.")
        self.run(app, "production")
        change = ChangeRequest.objects.get(pk=latest.change_id)
        self.tick_all(change, "oncall", kinds=[ChecklistKind.ROLLBACK_VERIFICATION])

    def emergency(self, app: Application, day: datetime, *, impact: str, review: str) -> None:
        add = self.timeline.add
        t0 = local(day, 3, 10)
        holder: dict[str, str] = {}

        def register():
            # A patch of what runs in production now.
            current = (Deployment.objects.filter(
                application=app, environment=self.envs["production"],
                status=Deployment.Status.SUCCEEDED).order_by("-id")
                .values_list("release__version", flat=True).first() or "1.0.0")
            major, minor, patch = (int(p) for p in current.split("."))
            version = holder["version"] = f"{major}.{minor}.{patch + 7}"
            url, digest = _artifact(app.slug, version)
            hooks.push_deploy(actor=self.people["ci-bot"], application=app, version=version,
                              ref="hotfix", authors=["engineer"], artifact_url=url,
                              artifact_sha256=digest, notes="Emergency fix for the incident.",
                              commit_sha=hashlib.sha1(version.encode()).hexdigest()[:12],
                              committed_at=portal_clock.now() - timedelta(hours=1))
            self.history.changes += 1
            self.run(app, "development")

        add(t0, register)
        add(t0 + timedelta(minutes=25), lambda: holder and self.request(
            app, holder["version"], "production", change_type=ChangeType.EMERGENCY,
            strategy="all_at_once", risk="high",
            impact=impact,
            rollback_plan="Redeploy the previous release; the fix changes no schema.",
            on_call=self.people["oncall"]))
        add(t0 + timedelta(minutes=35), lambda: holder and self.decide(
            app, holder["version"], "production", "emergency", "oncall"))
        add(t0 + timedelta(minutes=40), lambda: holder and self.deploy(app, holder["version"],
                                                            "production", "oncall"))
        if review:
            add(t0 + timedelta(days=1, hours=7),
                lambda: holder and self.tick_compliance(app, holder["version"]))
            add(t0 + timedelta(days=3, hours=8),
                lambda: holder and self.close_review(app, holder["version"], review))

    def close_review(self, app: Application, version: str, findings: str) -> None:
        review = PostImplementationReview.objects.filter(
            change__release__application=app, change__release__version=version,
            closed_at__isnull=True).first()
        if review is not None:
            approval_services.review_close(actor=self.people["cab"], review=review,
                                           findings=findings)

    # -- the whole organisation ----------------------------------------------------------

    def setup(self) -> None:
        """Applications and targets (as an administrator adds them), the year-end freeze."""
        admin = self.people["admin"]
        for plan in APPS:
            app, created = Application.objects.get_or_create(
                slug=plan.slug, defaults={
                    "name": plan.name, "team": plan.team,
                    "repository_url": f"https://git.example.com/{plan.team.lower()}/{plan.slug}",
                    "executor_settings": {"analysis": {"enabled": True}} if plan.analysis
                    else {}})
            if created:
                admin_change_record(actor=admin, obj=app, verb="added", before=None,
                                    after={"slug": app.slug, "name": app.name,
                                           "team": app.team})
            for env_slug, names in plan.targets.items():
                for name in names:
                    target, made = Target.objects.get_or_create(
                        application=app, environment=self.envs[env_slug], name=name,
                        defaults={"address": f"{name}.{plan.slug}.{env_slug}.internal"})
                    if made:
                        admin_change_record(actor=admin, obj=target, verb="added",
                                            before=None, after={"target": str(target)})
            self.apps[plan.slug] = app
            self.history.applications.append(plan.slug)
        production = self.envs["production"]
        year = self.now.astimezone(LONDON).year
        starts = datetime(year, 12, 19, 18, 0, tzinfo=LONDON)
        if not Freeze.objects.filter(environment=production, recurs_yearly=True).exists():
            ends = datetime(year + 1, 1, 4, 8, 0, tzinfo=LONDON)

            def add_freeze(data: dict) -> None:
                data["environments"]["production"]["freezes"].append({
                    "starts_at": starts.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                    "ends_at": ends.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                    "recurs_yearly": True,
                    "reason": "Year-end change freeze: peak trading and reduced staffing"})

            self.policy_amend("The year-end change freeze in Production", add_freeze)

    def policy_amend(self, summary: str, edit) -> None:
        """A new version of the policy document, as a team makes one: the tech lead
        proposes the active document with ``edit(data)`` applied, the gates the policy
        names for its own changes (CAB and security) approve it, and it binds at once."""
        data = yaml.safe_load(approval_services.active_version().document)
        edit(data)
        version = approval_services.policy_propose(
            actor=self.people["techlead"], text=policy_rows.dump(data), summary=summary)
        for role in version.gates:
            approval_services.policy_decide(actor=self.people[role], version=version,
                                            role=role, decision="approved",
                                            comment="Reviewed; agreed.")

    def plan(self) -> None:
        for plan in APPS:
            app = self.apps[plan.slug]
            count = min(plan.releases, 3) if self.small else plan.releases
            every = plan.every_days if not self.small else DAYS / (count + 1)
            # The last release of each application reaches now in the inbox story instead.
            for n in range(count):
                version = f"{1 + n // 6}.{n % 6}.0" if plan.slug != "ops-console" \
                    else f"0.{n + 1}.0"
                day = self.start + timedelta(days=4 + n * every + self.random.uniform(0, 2))
                twist = self.twist(plan.slug, n, count)
                if twist == "canary_fails":
                    BAD_RELEASES.add((plan.slug, version))
                if twist == "staging_fails":
                    FAILING_STEPS[(plan.slug, version, "staging")] = (
                        "migrate", "migration timed out after 900 s waiting for a lock on "
                                   "events; nothing was applied")
                self.release_story(app, plan, n, version, day, twist)
        mobile, payments = self.apps["mobile-backend"], self.apps["payments-api"]
        self.emergency(mobile, self.start + timedelta(days=DAYS * 0.55),
                       impact="Push notifications fail for every iOS user: P1 incident "
                              "INC-4711.",
                       review="Root cause: an expired certificate on the push gateway. "
                              "Actions: certificate expiry alerting (OPS-231), runbook "
                              "updated. The emergency path was used correctly.")
        self.emergency(payments, self.now - timedelta(days=6),
                       impact="Card payments declined for one acquirer: P1 incident "
                              "INC-4802.", review="")
        self.waiting_now()
        CabStory(self).plan()

    def twist(self, slug: str, n: int, count: int) -> str:
        if self.small:
            return {("payments-api", 1): "canary_fails", ("payments-api", 2): "security_rejects",
                    ("mobile-backend", 1): "manual_rollback", ("mobile-backend", 2): "qa_rejects",
                    ("data-pipeline", 1): "scheduled"}.get((slug, n), "")
        return {
            ("payments-api", 3): "security_rejects", ("payments-api", 7): "canary_fails",
            ("payments-api", 10): "scheduled", ("payments-api", 5): "qa_rejects",
            ("mobile-backend", 2): "hotfix", ("mobile-backend", 4): "manual_rollback",
            ("mobile-backend", 6): "scheduled",
            ("data-pipeline", 2): "staging_fails", ("data-pipeline", 3): "scheduled",
        }.get((slug, n), "")

    def waiting_now(self) -> None:
        """Changes in flight now: something in every approver's inbox, one scheduled."""
        add = self.timeline.add
        base = self.now - timedelta(days=2, hours=6)
        payments = self.apps["payments-api"]
        mobile = self.apps["mobile-backend"]
        pipeline = self.apps["data-pipeline"]
        console = self.apps["ops-console"]
        plans = {p.slug: p for p in APPS}
        # Staging: tech lead and QA to decide.
        add(base, lambda: self.push(payments, plans["payments-api"], "4.0.0",
                                    "New payout scheduling.", None))
        add(self.before_now(base + timedelta(hours=20)), lambda: self.request(
            payments, "4.0.0", "staging", risk="medium", impact="Payouts: new scheduling."))
        add(base + timedelta(hours=1), lambda: self.push(console, plans["ops-console"], "0.9.0",
                                                         "On-call handover screen.", None))
        add(self.before_now(base + timedelta(hours=21)), lambda: self.request(
            console, "0.9.0", "staging", impact="Ops console: handover screen."))
        # Releases through staging last week, now asking for production.
        # The pipeline's drops the legacy aggregates table: an irreversible migration, so
        # its hotfix below scores high enough for the extra gate (demo/history/cab.py).
        for app, plan, migrations in (
                (mobile, plans["mobile-backend"], None),
                (pipeline, plans["data-pipeline"],
                 [{"name": "0060_drop_legacy_aggregates", "kind": "irreversible"}])):
            start = base - timedelta(days=5)
            add(start, lambda app=app, plan=plan, migrations=migrations: self.push(
                app, plan, "5.0.0", "Larger release: see the release notes.", migrations))
            add(start + timedelta(days=1), lambda app=app: self.request(
                app, "5.0.0", "staging", strategy="all_at_once", risk="medium",
                impact=f"{app.name}: larger release."))
            add(start + timedelta(days=1, hours=2),
                lambda app=app: self.decide(app, "5.0.0", "staging", "tech_lead", "techlead"))
            add(start + timedelta(days=1, hours=4),
                lambda app=app: self.decide(app, "5.0.0", "staging", "qa", "qa"))
            add(start + timedelta(days=1, hours=5),
                lambda app=app: self.deploy(app, "5.0.0", "staging", "engineer"))
        # Production standard change: CAB, security and business to decide.
        last_mobile = self.latest_promoted("mobile-backend")
        add(self.before_now(base + timedelta(hours=26)), lambda: self.request(
            mobile, last_mobile(), "production", change_type=ChangeType.STANDARD,
            strategy="rolling", risk="medium", on_call=self.people["oncall"],
            impact="Mobile app users: faster session refresh.",
            rollback_plan="Roll back to the previous release with the portal's rollback."))
        # Production hotfix: tech lead and CAB.
        last_pipeline = self.latest_promoted("data-pipeline")
        add(self.before_now(base + timedelta(hours=30)), lambda: self.request(
            pipeline, last_pipeline(), "production", change_type=ChangeType.HOTFIX,
            risk="medium", on_call=self.people["oncall"],
            impact="Nightly aggregates finish an hour earlier.",
            rollback_plan="Redeploy the previous release and restore the legacy aggregates "
                          "table from the snapshot the deployment takes first; the "
                          "migration that drops it cannot be undone."))
        # Scheduled for the next production window, approved and ready: the beat starts it.
        asked = self.before_now(base + timedelta(hours=2))
        add(asked, lambda: self.schedule_next_window(console))
        for hours, (role, who) in enumerate((("cab", "cab2"), ("security", "security"),
                                             ("business", "business")), start=1):
            add(asked + timedelta(hours=hours, minutes=self.random.randint(0, 40)),
                lambda role=role, who=who: self.decide(
                    console, self.scheduled_version, "production", role, who))
        add(asked + timedelta(hours=4, minutes=50), lambda: self.tick_all(
            self.change(console, self.scheduled_version, "production"), "oncall"))
        # CAB has decided part of one: security and business still to go.
        add(base + timedelta(hours=33), lambda: self.decide(
            mobile, last_mobile(), "production", "cab", "cab2",
            comment="Fine for Thursday's window."))

    def before_now(self, moment: datetime) -> datetime:
        """In working hours if that is still in the past, else as it is."""
        in_hours = working(moment, self.random)
        return in_hours if in_hours < self.now - timedelta(hours=8) else moment

    def schedule_next_window(self, app: Application) -> None:
        staged = (Deployment.objects.filter(application=app, environment=self.envs["staging"],
                                            status=Deployment.Status.SUCCEEDED)
                  .order_by("-id").values_list("release__version", flat=True).first())
        if staged is None:
            return
        when = self.window_after(self.now + timedelta(hours=2))
        self.request(app, staged, "production", who="oncall", scheduled_for=when,
                     change_type=ChangeType.STANDARD, risk="low",
                     impact="Ops console in production for the on-call rota.",
                     rollback_plan="Roll back with the portal; no data to migrate.",
                     on_call=self.people["oncall"])
        self.scheduled_version = staged

    def latest_promoted(self, slug: str) -> Callable[[], str]:
        """The newest version of ``slug`` that reached staging but not production (read late)."""
        def version() -> str:
            app = self.apps[slug]
            staged = set(Deployment.objects.filter(
                application=app, environment=self.envs["staging"],
                status=Deployment.Status.SUCCEEDED).values_list("release__version", flat=True))
            in_prod = set(ChangeRequest.objects.filter(
                release__application=app, environment=self.envs["production"])
                .values_list("release__version", flat=True))
            candidates = sorted(staged - in_prod, key=lambda v: [int(p) for p in v.split(".")])
            if candidates:
                return candidates[-1]
            return sorted(staged, key=lambda v: [int(p) for p in v.split(".")])[-1]
        return version

