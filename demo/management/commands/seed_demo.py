"""Demo data (DESIGN.md section 9): environments, policies, groups, one user per role."""

import hashlib
from datetime import time, timedelta
from pathlib import Path

from allauth.mfa.models import Authenticator
from allauth.mfa.utils import encrypt as mfa_encrypt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand
from django.db import transaction
from guardian.shortcuts import assign_perm

from approvals.models import CabSchedule, MaintenanceWindow
from approvals.policies import seed_default_policies
from approvals.services import policy_bootstrap
from audit.trail import System, audit_record
from catalog.models import Application, Environment, Release, Target
from catalog.permissions import holds_production_powers
from core import clock
from demo import history as demo_history

DEFAULT_PASSWORD = "demo-portal-2026"

ENVIRONMENTS = [("development", "Development", 1), ("staging", "Staging", 2),
                ("production", "Production", 3)]

# group -> {environment slug: [permission codenames]}
GROUP_PERMISSIONS = {
    "engineers": {
        "development": ["request_change", "deploy"],
        "staging": ["request_change", "deploy"],
        "production": ["request_change"],
    },
    "tech-leads": {
        "development": ["request_change"],
        "staging": ["request_change", "approve_tech_lead"],
        "production": ["request_change", "approve_tech_lead"],
    },
    "qa": {"staging": ["approve_qa"], "production": []},
    "cab": {"production": ["approve_cab"], "staging": []},
    "security": {"production": ["approve_security"], "staging": []},
    "business": {"production": ["approve_business"]},
    "on-call": {
        env: ["request_change", "deploy", "rollback", "approve_emergency"]
        for env in ("development", "staging", "production")
    },
}

USERS = [
    ("engineer", "engineers"), ("techlead", "tech-leads"), ("qa", "qa"), ("cab", "cab"),
    ("cab2", "cab"), ("security", "security"), ("business", "business"),
    ("oncall", "on-call"), ("auditor", "auditors"),
]


class Command(BaseCommand):
    help = "Create demo environments, policies, an application with releases, and role users."

    def add_arguments(self, parser):
        parser.add_argument("--password", default=DEFAULT_PASSWORD,
                            help="Password for every demo user.")
        parser.add_argument("--history", action="store_true",
                            help="Also make six months of history through the services: "
                                 "four more applications, approvals, deployments, "
                                 "rollbacks, reviews and changes waiting now.")
        parser.add_argument("--history-size", choices=["full", "small"], default="full",
                            help="small: a few releases per application (tests).")
        parser.add_argument("--dated-for-history", action="store_true",
                            help="Date the base data at the start of the history that a "
                                 "later `seed_demo --history` makes (`make run` does so).")

    def handle(self, *args, password: str, history: bool = False, history_size: str = "full",
               dated_for_history: bool = False, **options):
        if dated_for_history and not history:
            with demo_history.HistoryClock(
                    demo_history.start_of(clock.now()) - timedelta(hours=1)):
                self._seed(password)
            return
        if not history:
            self._seed(password)
            return
        if demo_history.already_made():
            self._seed(password)
            self.stdout.write("The demo history is already there.")
            return
        now = clock.now()
        # The base data dated just before the history, so the trail reads in time order.
        with demo_history.HistoryClock(demo_history.start_of(now) - timedelta(hours=1)):
            self._seed(password)
        made = demo_history.generate(size=history_size, now=now)
        self.stdout.write(self.style.SUCCESS(
            f"Demo history: {len(made.applications)} applications, {made.changes} changes, "
            f"{made.deployments} deployments."))
        for problem in made.problems:
            self.stdout.write(f"  refused on the way (kept as history): {problem}")

    @transaction.atomic
    def _seed(self, password: str) -> None:
        envs = {}
        for slug, name, order in ENVIRONMENTS:
            envs[slug], _ = Environment.objects.get_or_create(
                slug=slug, defaults={"name": name, "order": order,
                                     "production": slug == "production"})
            seed_default_policies(envs[slug])
        if not MaintenanceWindow.objects.filter(environment=envs["production"]).exists():
            # SOP 5.1: standard production changes deploy in maintenance windows.
            MaintenanceWindow.objects.bulk_create(
                MaintenanceWindow(environment=envs["production"], weekday=day,
                                  start_time=time(22, 0), end_time=time(2, 0),
                                  timezone="Europe/London")
                for day in (1, 3))

        groups = {}
        for group_name, per_env in GROUP_PERMISSIONS.items():
            group, _ = Group.objects.get_or_create(name=group_name)
            groups[group_name] = group
            for env_slug, codenames in per_env.items():
                for codename in codenames:
                    assign_perm(f"catalog.{codename}", group, envs[env_slug])
        auditors, _ = Group.objects.get_or_create(name="auditors")
        auditors.permissions.add(Permission.objects.get(codename="view_audit_trail"))
        groups["auditors"] = auditors

        User = get_user_model()
        for username, group_name in USERS:
            # Joined at the portal's time (the history's, when the data is dated for it).
            user, created = User.objects.get_or_create(
                username=username, defaults={"email": f"{username}@example.com",
                                             "date_joined": clock.now()})
            if created:
                user.set_password(password)
                user.save()
            user.groups.add(groups[group_name])
        admin, created = User.objects.get_or_create(
            username="admin", defaults={"email": "admin@example.com", "is_staff": True,
                                        "is_superuser": True, "date_joined": clock.now()})
        if created:
            admin.set_password(password)
            admin.save()

        # The change advisory board meets weekly, chaired by cab (docs/cab.md).
        if not CabSchedule.objects.filter(environment=envs["production"]).exists():
            CabSchedule.objects.create(
                name="Weekly CAB", environment=envs["production"], weekday=1,
                time=time(10, 0), timezone="Europe/London", duration_minutes=60,
                chair=User.objects.get(username="cab"))

        # SOP 10.2: everyone who may approve, deploy or roll back in Production holds a
        # second factor; the demo enrols them in TOTP with one known secret
        # (PORTAL_DEMO_TOTP_SECRET, printed by `make run`), for any authenticator app.
        enrolled = set(Authenticator.objects.filter(type=Authenticator.Type.TOTP)
                       .values_list("user_id", flat=True))
        for user in User.objects.filter(is_active=True).exclude(pk__in=enrolled):
            if holds_production_powers(user):
                Authenticator.objects.create(
                    user=user, type=Authenticator.Type.TOTP, created_at=clock.now(),
                    data={"secret": mfa_encrypt(settings.PORTAL_DEMO_TOTP_SECRET)})

        # The CI service account: signed hooks act as it (PORTAL_HOOK_USER); it reports
        # check results and authorship, registers releases and deploys pushes to
        # development. It signs in with API tokens only.
        ci, _ = Group.objects.get_or_create(name="ci")
        ci.permissions.add(Permission.objects.get(codename="report_ci"))
        bot, created = User.objects.get_or_create(username="ci-bot",
                                                  defaults={"date_joined": clock.now()})
        if created:
            bot.set_unusable_password()
            bot.save()
        bot.groups.add(ci, groups["engineers"])

        app, _ = Application.objects.get_or_create(
            slug="storefront",
            defaults={"name": "Storefront", "team": "Web",
                      "repository_url": "https://git.example.com/web/storefront"})
        # The storefront runs on the demo fleet: one loopback service per target, four
        # in production so a canary moves through 5%, 50% and 100% of them.
        if not app.executor_settings:
            app.executor_settings = {"fleet": "demo", "analysis": {"samples": 20},
                                     "keep_releases": 5}
            app.save(update_fields=["executor_settings"])
        for env in envs.values():
            names = ["app-1", "app-2", "app-3", "app-4"] if env.slug == "production" \
                else ["app-1"]
            for name in names:
                Target.objects.get_or_create(application=app, environment=env, name=name,
                                             defaults={"address": "127.0.0.1"})
        engineer = User.objects.get(username="engineer")
        # 1.3.0 is the bad demo version: its artifact tells the demo service to answer
        # most pages with errors, so canary analysis rolls it back (SOP 8.1).
        # Kept in the portal's artifact store, the one trusted source by default (SOP 10.1).
        artifacts = Path(settings.PORTAL_ARTIFACT_STORE)
        artifacts.mkdir(parents=True, exist_ok=True)
        bad_artifact = artifacts / "storefront-1.3.0.json"
        bad_artifact.write_text('{"error_rate": 0.6}\n')
        for version, notes, extra in [
            ("1.0.0", "First release of the storefront.", {}),
            ("1.1.0", "Faster checkout; new search box.", {}),
            ("1.2.0", "Gift cards.", {"migration_plan": [
                {"name": "0012_gift_cards", "kind": "expand"}]}),
            ("1.3.0", "New recommendations (the demo's bad version: answers with errors).",
             {"artifact_url": bad_artifact.as_uri(),
              "artifact_sha256": hashlib.sha256(bad_artifact.read_bytes()).hexdigest()}),
        ]:
            release, created = Release.objects.get_or_create(
                application=app, version=version,
                defaults={"notes": notes, "created_by": engineer,
                          "commit_sha": hashlib.sha1(version.encode()).hexdigest()[:12],
                          "checks": {"tests": {"status": "passed"},
                                     "security_scan": {"status": "passed"}}, **extra})
            if created:
                audit_record(actor=System("demo data"), action="release.registered",
                             obj=release, after={"version": version})
        # Policies as code (docs/policies.md): the rows above are the first version of the
        # policy document; tech leads may propose a new version, CAB and security decide.
        groups["tech-leads"].permissions.add(
            Permission.objects.get(codename="add_policyversion"))
        policy_bootstrap(actor=System("demo data: the policy rows as the first version"))
        self.stdout.write(self.style.SUCCESS("Demo data is in place."))
