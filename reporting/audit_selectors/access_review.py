"""The access review (SOP 13.1): who holds what on which environment, and how they used it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.db.models import Count, Q, Sum

from audit.models import SignInDay
from catalog.models import Environment
from catalog.permissions import PRODUCTION_POWERS
from core import clock
from core.permissions import permission_grants
from identity.models import ApiToken

# ---------------------------------------------------------------------------
# Access review (SOP 13.1: monitor access to deployment systems)


@dataclass
class Factor:
    """A second factor a person enrolled (allauth's Authenticator)."""

    kind: str  # totp, webauthn, recovery_codes
    enrolled_at: datetime | None
    last_used_at: datetime | None

    @property
    def name(self) -> str:
        from identity.assurance import KIND_NAMES

        return KIND_NAMES.get(self.kind, self.kind)


@dataclass
class AccessRow:
    user: object
    groups: list[str]
    environment_permissions: dict[str, list[str]]
    auditor: bool
    active_tokens: int
    logins: int
    failed_logins: int
    last_seen: datetime | None
    # SOP 10.2: whether they hold Production powers (so must hold a second factor), and
    # the factors they enrolled.
    must_have_second_factor: bool = False
    factors: list[Factor] = field(default_factory=list)

    @property
    def factor_last_used(self) -> datetime | None:
        used = [f.last_used_at for f in self.factors if f.last_used_at]
        return max(used) if used else None

    @property
    def second_factor_missing(self) -> bool:
        return self.must_have_second_factor and not any(
            f.kind in ("totp", "webauthn") for f in self.factors)


def access_review(days: int = 90) -> list[AccessRow]:
    """Who holds what on which environment, and how they used it, in a fixed number of
    queries: for the periodic access review of SOP 13.1."""
    User = get_user_model()
    from allauth.mfa.models import Authenticator

    users = list(User.objects.order_by("username").prefetch_related("groups"))
    environments = list(Environment.objects.all())
    envs = {str(e.pk): e.slug for e in environments}
    production = {e.slug for e in environments if e.production}
    factors: dict[int, list[Factor]] = defaultdict(list)
    for user_id, kind, created, used in Authenticator.objects.order_by(
            "created_at", "id").values_list("user_id", "type", "created_at", "last_used_at"):
        factors[user_id].append(Factor(kind=kind, enrolled_at=created, last_used_at=used))
    user_grants, group_grants = permission_grants(Environment)
    by_group: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for gid, obj, codename in group_grants:
        by_group[gid].append((obj, codename))
    by_user: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for uid, obj, codename in user_grants:
        by_user[uid].append((obj, codename))
    auditors = set(User.objects.filter(
        Q(user_permissions__codename="view_audit_trail")
        | Q(groups__permissions__codename="view_audit_trail")).values_list("pk", flat=True))
    tokens = dict(ApiToken.objects.active().values("user_id").annotate(n=Count("id"))
                  .values_list("user_id", "n"))
    # Counted per day as the trail is written (``SignInDay``): a few rows per person
    # and day, however many events the trail holds.
    # Refusals are counted for the names of the people listed, whatever else was tried.
    since = (clock.now() - timedelta(days=days)).date()
    recent = SignInDay.objects.filter(day__gte=since).order_by()
    logins = dict(recent.filter(action="auth.login").values_list("actor_id")
                  .annotate(n=Sum("count")))
    failures = dict(recent.filter(action="auth.login_failed",
                                  name__in=[u.get_username() for u in users])
                    .values_list("name").annotate(n=Sum("count")))
    rows = []
    for user in users:
        perms: dict[str, set[str]] = defaultdict(set)
        for group in user.groups.all():
            for obj, codename in by_group.get(group.pk, []):
                perms[envs.get(obj, obj)].add(codename)
        for obj, codename in by_user.get(user.pk, []):
            perms[envs.get(obj, obj)].add(codename)
        if user.is_superuser:
            perms = {slug: {"all"} for slug in envs.values()}
        rows.append(AccessRow(
            user=user,
            groups=sorted(g.name for g in user.groups.all()),
            environment_permissions={k: sorted(v) for k, v in sorted(perms.items())},
            auditor=user.is_superuser or user.pk in auditors,
            active_tokens=tokens.get(user.pk, 0),
            logins=logins.get(user.pk, 0),
            failed_logins=failures.get(user.get_username(), 0),
            last_seen=user.last_login,
            must_have_second_factor=user.is_active and (user.is_superuser and bool(production)
                                                        or any(perms.get(slug, set())
                                                               & PRODUCTION_POWERS
                                                               for slug in production)),
            factors=factors.get(user.pk, []),
        ))
    return rows
