"""The CAB's story (docs/cab.md, "In the demo"): the weekly board of the last three
weeks and what it left for the next meeting, every step through the services.

- The preparations, a week before the first meeting: the administrator makes the mobile
  backend depend on the payments API (*Catalog › Applications › Depends on*); a new
  version of the policy document, proposed by the tech lead and approved by CAB and
  security, makes a hotfix to Production scoring 60 or more also need security's review
  and lets staging gates not decided within 72 hours expire.
- Three meetings held (``meetings_plan``, attendance, ``meeting_decide``,
  ``meeting_close``), each planned and its agenda sent the day before as the beat does:
  changes approved and deployed that night, one rejected, one deferred with a reason
  and approved the week after, and one approved but never started, whose approvals
  lapse a week later (the beat's ``deadlines_enforce``).
- A staging change whose QA gate was not decided in time and expired.
- The next meeting, planned with its agenda: the lapsed change back on it, in conflict
  with the mobile backend's change (a dependency), and the data pipeline's hotfix with
  an irreversible migration (``story.Generator.waiting_now``), whose score passes the
  threshold and added the security gate.

Each meeting's changes come through development and staging and are requested for
Production the week before, security and business approving ad hoc; the CAB gate waits
for the meeting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from approvals import services as approval_services
from approvals.models import (
    ApprovalPolicy,
    CabAgendaItem,
    CabMeeting,
    CabSchedule,
    ChangeType,
)
from audit.access import admin_change_record
from demo.history.clock import local
from demo.history.plan import APPS

# The policy the administrator sets before the first meeting.
RISK_THRESHOLD = 60
STAGING_APPROVE_WITHIN_HOURS = 72


@dataclass(frozen=True)
class Item:
    """A change the board decides: the application, its version and what it does."""

    slug: str
    version: str
    notes: str
    migration: str = ""  # the kind of its migration, if it has one


# What each meeting decides: (item, decision, who, comment). A decision "" leaves the
# item for a later meeting.
ITEMS = {
    "pipeline-1.5": Item("data-pipeline", "1.5.0", "Partitioned event storage.", "expand"),
    "mobile-2.2": Item("mobile-backend", "2.2.0", "Faster push notification fan-out."),
    "mobile-2.3": Item("mobile-backend", "2.3.0", "Offline sync for the shopping basket."),
    "pipeline-1.6": Item("data-pipeline", "1.6.0", "Late-event backfill.", "expand"),
    "payments-3.3": Item("payments-api", "3.3.0", "Payout batching by currency."),
}
MEETINGS = [
    # (weeks before the last, attendance {user: present}, decisions)
    (2, {"cab": True, "cab2": True}, [
        ("pipeline-1.5", "approve", "cab",
         "Expand-only migration, inside Tuesday's window; on-call named."),
        ("mobile-2.2", "approve", "cab2", "Small and well tested; approved for tonight."),
    ]),
    (1, {"cab": True, "cab2": True}, [
        ("mobile-2.3", "reject", "cab2",
         "No load test of offline sync at peak volume; request again with the results."),
        ("pipeline-1.6", "defer", "cab",
         "Waiting for the backfill dry run on staging; back next week."),
        ("payments-3.3", "approve", "cab",
         "Approved; start it in this week's Thursday window."),
    ]),
    (0, {"cab": True, "cab2": False}, [
        ("pipeline-1.6", "approve", "cab", "Dry run clean (48 min); approved for tonight."),
    ]),
]
# Approved in a meeting but never started: its approvals lapse a week later.
NEVER_STARTED = "payments-3.3"


def past_meetings(schedule: CabSchedule, now: datetime) -> list[datetime]:
    """The starts of the three meetings held: the latest at least two hours before
    ``now`` (so it has been held) and the two weeks before it, oldest first."""
    latest = approval_services.meeting_starts_after(schedule, now - timedelta(days=7, hours=2))
    return [latest - timedelta(days=7 * weeks) for weeks in (2, 1, 0)]


class CabStory:
    """Adds its steps to the timeline of a ``story.Generator``, with its helpers."""

    def __init__(self, generator) -> None:
        self.g = generator
        self.plans = {p.slug: p for p in APPS}
        self.schedule = CabSchedule.objects.select_related("chair").filter(
            environment=generator.envs["production"], active=True).first()

    def plan(self) -> None:
        if self.schedule is None:
            return
        add = self.g.timeline.add
        starts = past_meetings(self.schedule, self.g.now)
        add(local(starts[0] - timedelta(days=8), 9, 30), self.prepare)
        requested = set()
        for start, (_, attendance, decisions) in zip(starts, MEETINGS, strict=True):
            for key, _, _, _ in decisions:
                if key not in requested:
                    requested.add(key)
                    self.towards_meeting(ITEMS[key], start)
            self.meeting(start, attendance, decisions)
        self.expiring_staging_change(starts[1] - timedelta(days=6))
        # The beat plans the next meeting and builds its agenda (and sends it once the
        # meeting is a day away); here, a quarter of an hour before the present.
        add(self.g.now - timedelta(minutes=15), lambda: self.beat_plans_meetings(
            after=self.g.now))

    # -- the steps ---------------------------------------------------------------------

    def prepare(self) -> None:
        """The administrator's edits before the first meeting (as the admin records them)."""
        admin = self.g.people["admin"]
        mobile, payments = self.g.apps["mobile-backend"], self.g.apps["payments-api"]
        before = {"depends_on": sorted(mobile.depends_on.values_list("slug", flat=True))}
        mobile.depends_on.add(payments)
        admin_change_record(actor=admin, obj=mobile, verb="changed", before=before,
                            after={"depends_on": sorted([*before["depends_on"],
                                                         payments.slug])})
        # The policy for the meetings, as a new version of the policy document.
        def for_meetings(data: dict) -> None:
            kinds = {slug: data["environments"][slug]["change_types"]
                     for slug in ("production", "staging")}
            kinds["production"][ChangeType.HOTFIX].update(
                risk_threshold=RISK_THRESHOLD, risk_extra_gate="security")
            kinds["staging"][ChangeType.STANDARD]["approve_within_hours"] = \
                STAGING_APPROVE_WITHIN_HOURS

        self.g.policy_amend(
            f"Production hotfixes from risk {RISK_THRESHOLD} also need Security; staging "
            f"gates are decided within {STAGING_APPROVE_WITHIN_HOURS} hours", for_meetings)

    def towards_meeting(self, item: Item, meeting: datetime) -> None:
        """Development and staging in the week before the meeting, then the request for
        Production, approved by security and business ad hoc: CAB waits for the meeting."""
        g, add = self.g, self.g.timeline.add
        app, plan = g.apps[item.slug], self.plans[item.slug]
        t0 = local(meeting - timedelta(days=6), 10, 5 + len(item.version) * 3)
        migrations = ([{"name": f"{50 + int(item.version.split('.')[1]):04d}_"
                                f"{item.notes.split()[0].lower()}", "kind": item.migration}]
                      if item.migration else None)
        add(t0, lambda: g.push(app, plan, item.version, item.notes, migrations))
        strategy = "all_at_once" if plan.strategy == "canary" else plan.strategy
        add(t0 + timedelta(hours=1), lambda: g.request(
            app, item.version, "staging", strategy=strategy, risk="low",
            impact=f"{app.name}: {item.notes}"))
        add(t0 + timedelta(hours=2), lambda: g.decide(app, item.version, "staging",
                                                      "tech_lead", "techlead"))
        add(t0 + timedelta(hours=3), lambda: g.decide(app, item.version, "staging", "qa",
                                                      "qa"))
        add(t0 + timedelta(hours=4), lambda: g.deploy(app, item.version, "staging",
                                                      "engineer"))
        t1 = local(meeting - timedelta(days=5), 11, 20)
        add(t1, lambda: g.request(
            app, item.version, "production", change_type=ChangeType.STANDARD,
            strategy=plan.strategy, risk="medium", on_call=g.people["oncall"],
            impact=f"{app.name} users: {item.notes}",
            rollback_plan=f"Roll back to the previous {app.name} release with the portal's "
                          "rollback" + ("; the migration only adds, nothing to undo."
                                        if item.migration else ".")))
        add(t1 + timedelta(hours=2), lambda: g.decide(app, item.version, "production",
                                                      "security", "security"))
        add(t1 + timedelta(hours=3), lambda: g.decide(app, item.version, "production",
                                                      "business", "business"))

    def meeting(self, start: datetime, attendance: dict[str, bool], decisions) -> None:
        add = self.g.timeline.add
        # The beat the day before (agenda_lead_hours) and just before the meeting.
        add(start - timedelta(hours=self.schedule.agenda_lead_hours, minutes=-3),
            self.beat_plans_meetings)
        add(start - timedelta(minutes=5), self.beat_plans_meetings)
        add(start + timedelta(minutes=2), lambda: self.take_attendance(start, attendance))
        for n, (key, decision, who, comment) in enumerate(decisions):
            add(start + timedelta(minutes=8 + 9 * n), lambda key=key, decision=decision,
                who=who, comment=comment: self.decide(start, ITEMS[key], decision, who,
                                                      comment))
        add(start + timedelta(minutes=41), lambda: self.close(start))
        for key, decision, _, _ in decisions:
            if decision != "approve":
                continue
            item = ITEMS[key]
            if key == NEVER_STARTED:
                self.lapse(item, start)
                continue
            add(start + timedelta(hours=3), lambda item=item: self.g.tick_prod(
                self.g.apps[item.slug], item.version))
            add(self.g.window_after(start + timedelta(hours=4)), lambda item=item: self.g.deploy(
                self.g.apps[item.slug], item.version, "production", "oncall"))

    def beat_plans_meetings(self, after: datetime | None = None) -> None:
        approval_services.meetings_plan(at=after)
        approval_services.meetings_send_agendas()

    def _meeting(self, start: datetime) -> CabMeeting | None:
        return CabMeeting.objects.filter(schedule=self.schedule, starts_at=start).first()

    def take_attendance(self, start: datetime, attendance: dict[str, bool]) -> None:
        meeting = self._meeting(start)
        if meeting is None:
            return
        for username, present in attendance.items():
            approval_services.attendance_mark(meeting=meeting, user=self.g.people[username],
                                              present=present, actor=self.schedule.chair)

    def decide(self, start: datetime, item: Item, decision: str, who: str,
               comment: str) -> None:
        meeting = self._meeting(start)
        change = self.g.change(self.g.apps[item.slug], item.version, "production")
        if meeting is None or change is None:
            return
        row = CabAgendaItem.objects.filter(meeting=meeting, change=change).first()
        if row is None:
            return
        # Members read the change on its page before deciding (the approval quality).
        approval_services.change_view_record(change=change, user=self.g.people[who])
        approval_services.meeting_decide(meeting=meeting, item=row, decision=decision,
                                         actor=self.g.people[who], comment=comment)

    def close(self, start: datetime) -> None:
        meeting = self._meeting(start)
        if meeting is not None:
            approval_services.meeting_close(meeting=meeting, actor=self.schedule.chair)

    def lapse(self, item: Item, start: datetime) -> None:
        """Approved in the meeting, never started: the beat warns the day before the
        start-by time and lapses the approvals when it passes."""
        days = ApprovalPolicy.objects.filter(
            environment=self.g.envs["production"], change_type=ChangeType.STANDARD
        ).values_list("execute_within_days", flat=True).first()
        if not days:
            return
        # Approved during the meeting (its first 41 minutes): the start-by time passes
        # in the same minutes a week later, just after the next meeting.
        due = start + timedelta(days=days)
        self.g.timeline.add(due - timedelta(hours=23), approval_services.deadlines_enforce)
        self.g.timeline.add(due + timedelta(minutes=50), approval_services.deadlines_enforce)

    def expiring_staging_change(self, day: datetime) -> None:
        """A staging change the tech lead approved but QA never decided: after 72 hours
        its gates expire and it goes back to its requester as a draft."""
        g, add = self.g, self.g.timeline.add
        app, plan = g.apps["ops-console"], self.plans["ops-console"]
        t0 = local(day, 14, 10)
        add(t0, lambda: g.push(app, plan, "0.3.0", "Export of the on-call rota.", None))
        add(t0 + timedelta(hours=1), lambda: g.request(
            app, "0.3.0", "staging", risk="low", impact="Ops console: rota export."))
        add(t0 + timedelta(hours=2, minutes=30), lambda: g.decide(
            app, "0.3.0", "staging", "tech_lead", "techlead"))
        expires = t0 + timedelta(hours=1 + STAGING_APPROVE_WITHIN_HOURS)
        add(expires - timedelta(hours=23), approval_services.deadlines_enforce)
        add(expires + timedelta(minutes=1), approval_services.deadlines_enforce)

