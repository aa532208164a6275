"""Read queries for configuration: current versions, history, diffs, approval digests."""

from __future__ import annotations

import difflib

from django.db.models import QuerySet

from configuration.models import ConfigurationVersion

EMPTY_DIGEST = ""


def versions(application_id: int, environment_id: int) -> QuerySet[ConfigurationVersion]:
    return (ConfigurationVersion.objects.filter(application_id=application_id,
                                                environment_id=environment_id)
            .select_related("author", "application", "environment").order_by("-number"))


def current(application_id: int, environment_id: int) -> ConfigurationVersion | None:
    return versions(application_id, environment_id).first()


def digests_for(change) -> tuple[str, str]:
    """(configuration digest, secret references digest) of the configuration a change
    would deploy: what an approval is bound to (DESIGN.md section 8). Empty strings
    when the application has no configuration there."""
    row = (ConfigurationVersion.objects.filter(
        application_id=change.release.application_id, environment_id=change.environment_id)
        .order_by("-number").values_list("digest", "secret_references_digest").first())
    return row if row else (EMPTY_DIGEST, EMPTY_DIGEST)


def version_for(change) -> tuple[int | None, str, str]:
    """(version number, configuration digest, secret references digest) of the
    configuration a change would deploy now; (None, "", "") when there is none. The
    number is kept on the change's deployment, so that it runs the version approved."""
    row = (ConfigurationVersion.objects.filter(
        application_id=change.release.application_id, environment_id=change.environment_id)
        .order_by("-number").values_list("number", "digest", "secret_references_digest")
        .first())
    return row if row else (None, EMPTY_DIGEST, EMPTY_DIGEST)


def digests_of_version(application_id: int, environment_id: int,
                       number: int | None) -> tuple[str, str]:
    """(configuration digest, secret references digest) of version ``number`` (what a
    deployment kept); empty strings for None or a version that does not exist."""
    row = None
    if number is not None:
        row = (ConfigurationVersion.objects.filter(application_id=application_id,
                                                   environment_id=environment_id,
                                                   number=number)
               .values_list("digest", "secret_references_digest").first())
    return row if row else (EMPTY_DIGEST, EMPTY_DIGEST)


def digests_for_many(changes) -> dict[tuple[int, int], tuple[str, str]]:
    """``digests_for`` of many changes in one query, by (application id, environment id);
    a pair absent from the answer has no configuration (empty digests)."""
    pairs = {(c.release.application_id, c.environment_id) for c in changes}
    if not pairs:
        return {}
    rows = (ConfigurationVersion.objects
            .filter(application_id__in={a for a, _ in pairs},
                    environment_id__in={e for _, e in pairs})
            .order_by("application_id", "environment_id", "-number")
            .distinct("application_id", "environment_id")
            .values_list("application_id", "environment_id", "digest",
                         "secret_references_digest"))
    found = {(a, e): (digest, secrets) for a, e, digest, secrets in rows}
    return {pair: found.get(pair, (EMPTY_DIGEST, EMPTY_DIGEST)) for pair in pairs}


def diff_lines(left: ConfigurationVersion | None, right: ConfigurationVersion | None,
               left_label: str, right_label: str) -> list[dict]:
    """A unified diff of two documents as rows the page colours."""
    a = (left.document if left else "").splitlines()
    b = (right.document if right else "").splitlines()
    rows = []
    for line in difflib.unified_diff(a, b, fromfile=left_label, tofile=right_label,
                                     lineterm="", n=3):
        if line.startswith(("---", "+++")):
            css = "head"
        elif line.startswith("@@"):
            css = "hunk"
        elif line.startswith("+"):
            css = "add"
        elif line.startswith("-"):
            css = "del"
        else:
            css = "same"
        rows.append({"text": line, "css": css})
    return rows
