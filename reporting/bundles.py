"""Evidence bundles: a zip an auditor takes away and verifies offline (docs/audit.md).

A bundle holds the events of a scope (one deployment's evidence, or the audit trail
under its filters) as they are hashed, every event between them up to a signed
checkpoint (so the chain can be recomputed from the bundle alone), the checkpoint and
its public key, a readable report (HTML and PDF), and a seal over all of it signed
with the checkpoint key (so the manifest, the report and which events are in scope
cannot be edited either). ``tools/verify_bundle.py`` checks it without the portal.

The zip is written as it is sent: events come from a server-side cursor and each
entry is compressed on the fly, so memory stays flat whatever the number of events.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, Max, Min, OuterRef, Q, QuerySet
from django.template.loader import render_to_string

from audit.checkpoints import seal_sign, signing_key
from audit.models import AuditEvent, SignedCheckpoint
from audit.trail import HASHED_FIELDS, audit_record, canonical
from core import clock

FORMAT = "change-portal-evidence-bundle"
VERSION = 2  # 2: sealed (seal.json); the verifier refuses an unsealed bundle
SEAL_VERSION = 1
REPORT_EVENTS = 500  # events listed in the readable report; all are in events.jsonl
FLUSH_BYTES = 256 * 1024
VERIFIER = Path(settings.BASE_DIR) / "tools" / "verify_bundle.py"


@dataclass
class BundleScope:
    """What a bundle is about: the events in scope and how the report describes them."""

    kind: str  # "deployment" or "trail"
    title: str
    events: QuerySet  # AuditEvent rows in scope (any order)
    described: dict = field(default_factory=dict)  # filters or the deployment id
    deployment: object | None = None


@dataclass
class BundlePlan:
    scope: BundleScope
    checkpoint: SignedCheckpoint | None = None
    first_id: int | None = None
    in_scope: int = 0
    linking: int = 0
    newer: int = 0  # events in scope written after the latest checkpoint: not bundled

    @property
    def empty(self) -> bool:
        return self.first_id is None


def deployment_scope(deployment) -> BundleScope:
    q = Q(object_type="deployment", object_id=str(deployment.pk)) | Q(
        object_type="release", object_id=str(deployment.release_id))
    if deployment.change_id:
        q |= Q(object_type="changerequest", object_id=str(deployment.change_id))
    return BundleScope(
        kind="deployment", deployment=deployment,
        title=f"Deployment #{deployment.pk}: {deployment.application.slug} "
              f"{deployment.release.version} to {deployment.environment.name}",
        events=AuditEvent.objects.filter(q), described={"deployment": deployment.pk})


def trail_scope(events: QuerySet, described: dict) -> BundleScope:
    shown = ", ".join(f"{k} {v}" for k, v in described.items()) or "every event"
    return BundleScope(kind="trail", title=f"Audit trail: {shown}", events=events,
                       described=described)


def plan_bundle(scope: BundleScope) -> BundlePlan:
    """Bound the bundle: from the first event in scope to the checkpoint covering the
    last one; events newer than the latest checkpoint wait for the next one."""
    plan = BundlePlan(scope=scope)
    latest = SignedCheckpoint.objects.order_by("-event_id").first()
    events = scope.events.order_by()
    if scope.events.query.is_empty():
        return plan
    if latest is None:
        plan.newer = events.count()
        return plan
    bounds = events.filter(id__lte=latest.event_id).aggregate(first=Min("id"), last=Max("id"))
    plan.newer = events.filter(id__gt=latest.event_id).count()
    if bounds["first"] is None:
        return plan
    plan.first_id = bounds["first"]
    plan.checkpoint = (SignedCheckpoint.objects.filter(event_id__gte=bounds["last"])
                       .order_by("event_id", "-signed_at").first())
    plan.in_scope = events.filter(id__gte=plan.first_id,
                                  id__lte=plan.checkpoint.event_id).count()
    segment = AuditEvent.objects.filter(id__gte=plan.first_id, id__lte=plan.checkpoint.event_id)
    plan.linking = segment.count() - plan.in_scope
    return plan


def bundle_download_record(*, actor, plan: BundlePlan) -> None:
    """SOP 13.1: who took which evidence away, and what it covered."""
    with transaction.atomic():
        audit_record(
            actor=actor, action="audit.bundle_downloaded",
            object_type="deployment" if plan.scope.kind == "deployment" else "auditevent",
            object_id=plan.scope.described.get("deployment", ""),
            object_repr=f"evidence bundle: {plan.scope.title}"[:300],
            after={"scope": plan.scope.described, "events_in_scope": plan.in_scope,
                   "linking_events": plan.linking,
                   "checkpoint_event": plan.checkpoint.event_id if plan.checkpoint else None,
                   "not_yet_checkpointed": plan.newer})


class _Sink:
    """A write-only file the zip is written to; the stream takes what piled up."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts, self.size = [], 0
        return data


def _line(row: dict) -> bytes:
    # The "event" object is exactly the canonical JSON the hash covers, byte for byte.
    head = (f'{{"id":{row["id"]},"hash":"{row["hash"]}",'
            f'"in_scope":{"true" if row["in_scope"] else "false"},"event":')
    return head.encode() + canonical(row).encode() + b"}\n"


def bundle_stream(plan: BundlePlan, *, generated_by: str, chunk_size: int = 2000
                  ) -> Iterator[bytes]:
    """The bundle's zip, in pieces of about 256 KiB, written as it goes.

    Its last entry, ``seal.json``, is signed with the checkpoint signing key: the
    SHA-256 of every other file (manifest, events, checkpoint, keys, reports), the
    scope, the first and last event, the counts and which events are in scope. The
    events are hashed as they are written, so the seal costs no second pass.
    """
    seal_key = signing_key()
    sink = _Sink()
    generated_at = clock.now()
    listed: list[dict] = []
    digests: dict[str, str] = {}
    sealed = {"first_id": None, "last_id": None, "in_scope": 0, "linking": 0}
    scoped_ids = hashlib.sha256()  # the ids of the events in scope, one a line
    checkpoint = plan.checkpoint if not plan.empty else None

    def put(zf: zipfile.ZipFile, name: str, data: str | bytes) -> None:
        data = data.encode() if isinstance(data, str) else data
        digests[name] = hashlib.sha256(data).hexdigest()
        zf.writestr(name, data)

    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        put(zf, "manifest.json", json.dumps(_manifest(plan, generated_by, generated_at),
                                            indent=2, sort_keys=True))
        events_digest = hashlib.sha256()
        with zf.open("events.jsonl", "w", force_zip64=True) as out:
            if not plan.empty:
                with transaction.atomic():
                    for row in _segment(plan, chunk_size):
                        line = _line(row)
                        out.write(line)
                        events_digest.update(line)
                        if sealed["first_id"] is None:
                            sealed["first_id"] = row["id"]
                        sealed["last_id"] = row["id"]
                        if row["in_scope"]:
                            sealed["in_scope"] += 1
                            scoped_ids.update(b"%d\n" % row["id"])
                            if len(listed) < REPORT_EVENTS:
                                listed.append({name: row[name] for name in (
                                    "id", "occurred_at", "actor_name", "action",
                                    "object_repr", "environment")})
                        else:
                            sealed["linking"] += 1
                        if sink.size >= FLUSH_BYTES:
                            yield sink.take()
        digests["events.jsonl"] = events_digest.hexdigest()
        put(zf, "checkpoints.jsonl", (json.dumps(
            {"checkpoint": checkpoint.body(), "signature": checkpoint.signature},
            sort_keys=True) + "\n") if checkpoint else "")
        # The checkpoint's key and the key that seals the bundle (the same one, unless
        # the key was rotated since the checkpoint was signed).
        keys = {seal_key.key_id: seal_key.public_b64}
        if checkpoint:
            keys[checkpoint.key_id] = checkpoint.public_key
        put(zf, "public-keys.jsonl", "".join(
            json.dumps({"key_id": key_id, "public_key": public}, sort_keys=True) + "\n"
            for key_id, public in sorted(keys.items())))
        context = _report_context(plan, listed, generated_by, generated_at)
        put(zf, "report.html", render_to_string("auditor/bundle_report.html", context))
        yield sink.take()
        put(zf, "report.pdf", _report_pdf(context))
        put(zf, "README.txt", render_to_string("auditor/bundle_readme.txt", context))
        seal, _key = seal_sign({
            "v": SEAL_VERSION, "format": FORMAT, "version": VERSION,
            "sealed_at": generated_at.isoformat(), "title": plan.scope.title,
            "scope": {"kind": plan.scope.kind, **plan.scope.described},
            "events": {**sealed, "in_scope_ids_sha256": scoped_ids.hexdigest()},
            "checkpoint": ({"event_id": checkpoint.event_id, "hash": checkpoint.hash,
                            "key_id": checkpoint.key_id} if checkpoint else None),
            "files": digests,
        }, key=seal_key)
        zf.writestr("seal.json", json.dumps(seal, indent=2, sort_keys=True) + "\n")
    yield sink.take()


def _segment(plan: BundlePlan, chunk_size: int):
    in_scope = Exists(plan.scope.events.order_by().filter(pk=OuterRef("pk")))
    return (AuditEvent.objects.filter(id__gte=plan.first_id, id__lte=plan.checkpoint.event_id)
            .annotate(in_scope=in_scope).order_by("id")
            .values("id", "hash", "in_scope", *HASHED_FIELDS).iterator(chunk_size=chunk_size))


def _manifest(plan: BundlePlan, generated_by: str, generated_at: datetime) -> dict:
    checkpoint = plan.checkpoint if not plan.empty else None
    return {
        "format": FORMAT, "version": VERSION,
        "title": plan.scope.title, "scope": {"kind": plan.scope.kind, **plan.scope.described},
        "generated_at": generated_at.isoformat(), "generated_by": generated_by,
        "events": {"in_scope": plan.in_scope, "linking": plan.linking,
                   "first_id": plan.first_id,
                   "last_id": checkpoint.event_id if checkpoint else None},
        "checkpoint": checkpoint.body() if checkpoint else None,
        "not_yet_checkpointed": plan.newer,
        "hash": ("SHA-256 of the 'event' object of each events.jsonl line, exactly as "
                 "written (JSON, keys sorted, no spaces, UTF-8); its prev_hash is the hash "
                 "of the line before it"),
        "files": ["manifest.json", "events.jsonl", "checkpoints.jsonl", "public-keys.jsonl",
                  "report.html", "report.pdf", "README.txt", "seal.json"],
        "seal": ("seal.json: the SHA-256 of every other file, the scope, the first and last "
                 "event, the counts and the ids in scope, signed with the key that signs "
                 "the checkpoints"),
    }


def _report_context(plan: BundlePlan, listed: list, generated_by: str,
                    generated_at: datetime) -> dict:
    context = {
        "plan": plan, "scope": plan.scope, "checkpoint": plan.checkpoint if not plan.empty
        else None, "events": listed, "listed_all": len(listed) >= plan.in_scope,
        "generated_by": generated_by, "generated_at": generated_at,
    }
    if plan.scope.deployment is not None:
        from reporting import audit_selectors as sel

        context["evidence"] = sel.evidence(plan.scope.deployment)
    return context


# ---------------------------------------------------------------------------
# The PDF report (fpdf2, pure Python; the core fonts hold Latin-1 only)


def _latin(text) -> str:
    text = "" if text is None else str(text)
    text = text.replace("…", "...").replace("—", "-").replace("–", "-").replace("→", "->")
    return text.encode("latin-1", "replace").decode("latin-1")


def _when(moment) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}" if moment else "-"


def _report_pdf(context: dict) -> bytes:
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    plan: BundlePlan = context["plan"]
    checkpoint = context["checkpoint"]
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    width = pdf.epw

    def heading(text: str, size: int = 13) -> None:
        pdf.set_font("Helvetica", "B", size)
        pdf.multi_cell(width, 7, _latin(text), align="L", new_x=XPos.LMARGIN,
                       new_y=YPos.NEXT)
        pdf.ln(1)

    def para(text: str, size: int = 9) -> None:
        pdf.set_font("Helvetica", "", size)
        pdf.multi_cell(width, 4.8, _latin(text), align="L", new_x=XPos.LMARGIN,
                       new_y=YPos.NEXT)
        pdf.ln(1)

    def table(rows: list, widths: tuple, header: tuple) -> None:
        # Plain one-line cells, each cut to its column: fpdf2's table() lays out every
        # cell with wrapping, several times slower for a few hundred events.
        scale = width / sum(widths)
        sizes = [w * scale for w in widths]

        def line(cells, style: str) -> None:
            pdf.set_font("Helvetica", style, 7.5)
            for size, cell in zip(sizes, cells, strict=True):
                text = _latin(cell)
                fits = max(int(size / 1.45), 4)
                if len(text) > fits:
                    text = text[:fits - 3] + "..."
                pdf.cell(size, 4.6, text, border="B")
            pdf.ln(4.6)

        line(header, "B")
        for row in rows:
            line(row, "")
        pdf.ln(2)

    heading("Evidence bundle", 16)
    heading(plan.scope.title, 12)
    para(f"Generated {context['generated_at']:%Y-%m-%d %H:%M:%S} UTC by "
         f"{context['generated_by']}.")
    heading("What this bundle proves")
    if checkpoint:
        para(f"{plan.in_scope} events in scope and {plan.linking} linking events, from event "
             f"{plan.first_id} to event {checkpoint.event_id}, chain to a checkpoint signed "
             f"at {checkpoint.signed_at:%Y-%m-%d %H:%M:%S} UTC with Ed25519 key "
             f"{checkpoint.key_id} (public key {checkpoint.public_key}). Check it offline: "
             "python3 verify_bundle.py <this zip> --pin-key <the portal's public key>.")
    else:
        para("No event in scope is covered by a signed checkpoint yet.")
    if plan.newer:
        para(f"{plan.newer} events in scope are newer than the latest checkpoint and are not "
             "in this bundle; the portal signs a checkpoint every minute.")
    evidence = context.get("evidence")
    if evidence:
        d = evidence["deployment"]
        change = evidence["change"]
        heading("Deployment")
        para(f"#{d.pk} {d.application.slug} {d.release.version} to {d.environment.name}: "
             f"{d.get_status_display()}; started {_when(d.started_at)}, finished "
             f"{_when(d.finished_at)} UTC; commit {d.release.commit_sha or '-'}; artifact "
             f"sha256 {d.release.artifact_sha256 or '-'}.")
        if change is not None:
            para(f"Change {change.reference} ({change.get_change_type_display()}); requested "
                 f"by {change.requested_by}; risk {change.risk or '-'}; rollback plan: "
                 f"{change.rollback_plan or '-'}")
        if evidence["decisions"]:
            heading("Approval decisions")
            table([(a.decided_at and f"{a.decided_at:%Y-%m-%d %H:%M}", a.gate.get_role_display(),
                    a.approver, a.get_decision_display(), a.comment)
                   for a in evidence["decisions"]], (22, 18, 18, 14, 40),
                  ("When (UTC)", "Gate", "Who", "Decision", "Comment"))
        heading("SOP 13.2 compliance")
        compliance = evidence["compliance"]
        table([(item.text, item.status.replace("_", " "), item.evidence)
               for item in compliance.items],
              (30, 14, 56), ("Item", "Status", "Evidence"))
        heading("Steps")
        table([(s.position, s.title, s.get_status_display()) for s in evidence["steps"]],
              (8, 60, 20), ("#", "Step", "Status"))
    heading("Events in scope")
    table([(e["id"], f"{e['occurred_at']:%Y-%m-%d %H:%M:%S}", e["actor_name"], e["action"],
            e["object_repr"], e["environment"]) for e in context["events"]],
          (12, 26, 18, 26, 44, 16), ("#", "When (UTC)", "Actor", "Action", "Object", "Env"))
    if not context["listed_all"]:
        para(f"The first {len(context['events'])} of {plan.in_scope} events are listed; "
             "events.jsonl holds them all.")
    return bytes(pdf.output())
