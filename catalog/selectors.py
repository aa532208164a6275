"""Read queries on the catalogue."""

from __future__ import annotations

from django.db.models import Exists, OuterRef, Q, QuerySet

from audit.permissions import is_auditor
from catalog.models import HostKey, Release, Target
from catalog.permissions import environment_permissions


def visible_environment_ids(user) -> list[int] | None:
    """Environments whose deployments ``user`` may see; None means all of them."""
    if user.is_superuser or is_auditor(user):
        return None
    return list(environment_permissions(user).keys())


# Where else a release has been, as the apps above the catalogue know it (the engine
# registers "deployed there" in its AppConfig.ready): ``reach(environment_ids)``
# answers a condition over releases (a ``Q`` or an ``Exists``) for those environments.
_RELEASE_REACH: list = []


def register_release_reach(reach) -> None:
    """Have ``releases_visible_to`` also show the releases ``reach`` finds in the
    environments a user holds a permission on. The catalogue imports nothing above it;
    the apps that know where a release went register here."""
    if reach not in _RELEASE_REACH:
        _RELEASE_REACH.append(reach)


def releases_visible_to(user, *, queryset: QuerySet[Release] | None = None
                        ) -> QuerySet[Release]:
    """Releases ``user`` may see, out of ``queryset`` (default: with their application).

    A release is seen by those who work where it runs: anyone holding any permission
    on an environment where its application has a target, or where the release was
    deployed (``register_release_reach``); by the person or CI account that registered
    it; by auditors and superusers. Everyone else gets a 404, as for changes and
    deployments in environments they hold nothing on. Filters in the query (an EXISTS
    each), so a list costs the same number of queries however many releases it shows."""
    queryset = (Release.objects.select_related("application") if queryset is None
                else queryset)
    env_ids = visible_environment_ids(user)
    if env_ids is None:
        return queryset
    if not getattr(user, "is_authenticated", False):
        return queryset.none()
    seen = (Q(created_by=user)
            | Exists(Target.objects.filter(application_id=OuterRef("application_id"),
                                           environment_id__in=env_ids)))
    for reach in _RELEASE_REACH:
        seen |= reach(env_ids)
    return queryset.filter(seen)


def pinned_keys(environment_id: int) -> dict[str, list[tuple[str, str]]]:
    """{host: [(key type, base64 key)]}: the SSH host keys pinned in an environment."""
    found: dict[str, list[tuple[str, str]]] = {}
    for host, key_type, key in HostKey.objects.filter(environment_id=environment_id) \
            .values_list("host", "key_type", "key"):
        found.setdefault(host, []).append((key_type, key))
    return found
