"""portalctl commands. ``portalctl --help`` lists them; docs/ci.md shows them in pipelines.

What a script captures goes to standard output: an id, or with ``--json`` the
portal's JSON answer. What a person reads in the job log (summaries, blockers,
deployment log lines) goes to standard error.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

import click

from portalctl import __version__
from portalctl.client import (
    FAILED,
    OK,
    REFUSED,
    UNREACHABLE,
    Portal,
    PortalError,
    Refused,
    derive_key,
    run_id_from_environment,
)

FINAL = {"succeeded", "failed", "rolled_back", "cancelled"}
# The portal validates the values; these are named for --help only.
GATES_HELP = "tech_lead, qa, cab, security, business or emergency."


STEP_UP_REQUIRED = "step_up_required"


class Context:
    def __init__(self, url: str, token: str, as_json: bool, run_id: str | None,
                 retries: int, timeout: float, step_up_code: str = "") -> None:
        self.url, self.token, self.as_json = url, token, as_json
        self.run_id = run_id_from_environment(run_id)
        self.retries, self.timeout = retries, timeout
        self.step_up_code = step_up_code
        self._portal: Portal | None = None

    @property
    def portal(self) -> Portal:
        if self._portal is None:
            if not self.url:
                raise click.UsageError("Set PORTAL_URL (or --url) to the portal's address.")
            if not self.token:
                raise click.UsageError("Set PORTAL_TOKEN (or --token) to an API token.")
            self._portal = Portal(self.url, self.token, retries=self.retries,
                                  timeout=self.timeout)
        return self._portal

    def key(self, command: str, **arguments) -> str:
        return derive_key(self.run_id, command, arguments)

    def post(self, path: str, body: dict | None, *, key: str):
        """POST; when the portal answers ``step_up_required`` (a Production decision
        with a token whose owner has not checked their second factor in the last
        minutes), answer the check with the owner's code and try once more."""
        try:
            return self.portal.post(path, body, key=key)
        except Refused as exc:
            if exc.code != STEP_UP_REQUIRED:
                raise
            code = self.step_up_code or self._ask_code(exc)
        checked = self.portal.step_up(code)
        say(f"second factor checked ({checked.get('kind')}); this token may decide in "
            f"Production until {checked.get('fresh_until')}")
        # The refused attempt's key replays its refusal; post() moves on to the next key.
        return self.portal.post(path, body, key=key)

    @staticmethod
    def _ask_code(refusal: Refused) -> str:
        if not sys.stdin.isatty():
            say("the portal asks for your second factor: give the code with "
                "--step-up-code or PORTAL_STEP_UP_CODE")
            raise refusal
        say(f"portal: {refusal.detail}")
        return click.prompt("Code from your authenticator app (or a recovery code)",
                            hide_input=True, err=True).strip()

    def emit(self, body, plain: str | None) -> None:
        """The answer on stdout: JSON with --json, else the plain value (an id)."""
        if self.as_json:
            click.echo(json.dumps(body, indent=2, sort_keys=True))
        elif plain is not None:
            click.echo(plain)


def say(message: str) -> None:
    click.echo(message, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="PORTAL_URL", default="", show_envvar=True,
              help="The portal's address, e.g. https://portal.example.com.")
@click.option("--token", envvar="PORTAL_TOKEN", default="", show_envvar=True,
              help="An API token (Authorization: Bearer).")
@click.option("--json", "as_json", is_flag=True, help="Print the portal's JSON answer.")
@click.option("--run-id", envvar="PORTAL_RUN_ID", default=None,
              help="The pipeline run this step belongs to (default: GITHUB_RUN_ID or "
                   "CI_PIPELINE_ID). Makes a retried step act once.")
@click.option("--retries", envvar="PORTAL_RETRIES", default=3, show_default=True, type=int,
              help="Retries when the portal is unreachable, busy or rate-limiting.")
@click.option("--timeout", "http_timeout", default=30.0, show_default=True, type=float,
              help="Seconds to wait for each HTTP answer.")
@click.option("--step-up-code", envvar="PORTAL_STEP_UP_CODE", default="",
              help="The code of your authenticator app (or a recovery code), sent when "
                   "the portal asks for a second-factor check before a Production "
                   "decision. Without it, portalctl asks on a terminal.")
@click.version_option(__version__, prog_name="portalctl")
@click.pass_context
def cli(ctx, url, token, as_json, run_id, retries, http_timeout, step_up_code):
    """Register releases, report checks, request, approve and deploy changes.

    Exit codes: 0 succeeded; 1 failed, rolled back, cancelled or not ready;
    2 refused by the portal (its code is printed) or a wrong command line;
    3 the portal cannot be reached.
    """
    ctx.obj = Context(url, token, as_json, run_id, retries, http_timeout, step_up_code)


# --- releases ---------------------------------------------------------------------------


@cli.group()
def release():
    """Releases: a version of an application, with its artifact."""


@release.command("create")
@click.option("--application", "-a", required=True, help="Application slug.")
@click.option("--version", "-v", "version", required=True, help="Version, e.g. 1.4.0.")
@click.option("--commit-sha", default="", help="The commit built.")
@click.option("--committed-at", default=None, help="When it was committed (ISO 8601).")
@click.option("--artifact-url", default="", help="Under one of the portal's trusted sources.")
@click.option("--artifact-sha256", default="", help="The artifact's SHA-256 (hex).")
@click.option("--notes", default="", help="Release notes.")
@click.pass_obj
def release_create(obj: Context, application, version, commit_sha, committed_at,
                   artifact_url, artifact_sha256, notes):
    """Register a release; prints its id. Registering it again answers the same release."""
    body = {"application": application, "version": version, "commit_sha": commit_sha,
            "artifact_url": artifact_url, "artifact_sha256": artifact_sha256, "notes": notes}
    if committed_at:
        body["committed_at"] = committed_at
    answer = obj.post("/releases/", body, key=obj.key("release create", **body))
    rel = answer.body
    say(f"release {rel['application']} {rel['version']} "
        f"{'registered' if answer.status == 201 else 'already registered'} (id {rel['id']})")
    obj.emit(rel, str(rel["id"]))


def release_id(obj: Context, value: str) -> int:
    """A release given by id or as APPLICATION@VERSION."""
    if value.isdigit():
        return int(value)
    application, sep, version = value.partition("@")
    if not sep or not application or not version:
        raise click.BadParameter("give the release id or APPLICATION@VERSION",
                                 param_hint="--release")
    found = obj.portal.get("/releases/", application=application, version=version)
    results = found.get("results", []) if isinstance(found, dict) else []
    if not results:
        raise Refused(404, "not_found", f"no release {application} {version}", {})
    return int(results[0]["id"])


# --- checks -----------------------------------------------------------------------------


@cli.group()
def checks():
    """CI results of a release (tests, security scan) and who wrote and merged it."""


@checks.command("report")
@click.option("--release", "-r", "release_ref", required=True,
              help="Release id or APPLICATION@VERSION.")
@click.option("--check", "-c", default=None, help="tests, security_scan, lint, ...")
@click.option("--status", "-s", type=click.Choice(["passed", "failed"]), default=None)
@click.option("--url", "check_url", default="", help="Where the results are (the CI job).")
@click.option("--summary", default="", help="One line about the result.")
@click.option("--critical", type=int, default=None, help="security_scan: critical findings.")
@click.option("--author", "authors", multiple=True, help="A commit author (repeatable).")
@click.option("--merger", "mergers", multiple=True, help="Who merged (repeatable).")
@click.option("--reported-at", default=None, help="When the check finished (ISO 8601).")
@click.pass_obj
def checks_report(obj: Context, release_ref, check, status, check_url, summary, critical,
                  authors, mergers, reported_at):
    """Report a check result and/or the release's authors and mergers (needs a CI account)."""
    if bool(check) != bool(status):
        raise click.UsageError("give --check and --status together")
    if not check and not authors and not mergers:
        raise click.UsageError("report a --check with its --status, or --author/--merger")
    body = {"release": release_id(obj, release_ref), "url": check_url, "summary": summary}
    if check:
        body.update(check=check, status=status)
    if critical is not None:
        body["critical"] = critical
    if authors:
        body["authors"] = list(authors)
    if mergers:
        body["mergers"] = list(mergers)
    if reported_at:
        body["reported_at"] = reported_at
    answer = obj.post("/hooks/ci", body, key=obj.key("checks report", **body))
    result = answer.body
    if result.get("duplicate"):
        say("this report was already received; nothing changed")
    elif result.get("superseded"):
        say(f"{check}: a newer result is held; this older one was not applied")
    else:
        held = ", ".join(f"{name} {value.get('status')}"
                         for name, value in sorted((result.get("checks") or {}).items()))
        say(f"release {result.get('application')} {result.get('version')}: {held or 'no checks'}")
    obj.emit(result, None)


# --- changes ----------------------------------------------------------------------------


@cli.group()
def change():
    """Change requests: create, show, approve, reject."""


def describe_change(body: dict) -> str:
    gates = ", ".join(f"{g['gate']} {g['status']}" for g in body.get("gates") or [])
    blockers = ", ".join(body.get("blockers") or []) or "none"
    return (f"{body.get('reference')} ({body.get('application')} {body.get('version')} to "
            f"{body.get('environment')}): {body.get('status')}; gates: {gates or 'none'}; "
            f"blockers: {blockers}")


@change.command("create")
@click.option("--release", "-r", "release_ref", required=True,
              help="Release id or APPLICATION@VERSION.")
@click.option("--environment", "-e", required=True, help="Environment slug, e.g. staging.")
@click.option("--type", "change_type", default="standard", show_default=True,
              help="standard, hotfix or emergency.")
@click.option("--strategy", default=None, help="all_at_once, rolling, blue_green, canary.")
@click.option("--rollback-plan", default="", help="How to undo it.")
@click.option("--risk", type=click.Choice(["", "low", "medium", "high"]), default="")
@click.option("--impact", default="", help="Who and what it affects.")
@click.option("--on-call", default=None, help="Username of the on-call engineer.")
@click.option("--scheduled-for", default=None, help="Deploy by itself at (ISO 8601).")
@click.option("--deploy-when-approved", is_flag=True, help="Deploy by itself once approved.")
@click.option("--draft", is_flag=True, help="Keep it as a draft (not submitted).")
@click.pass_obj
def change_create(obj: Context, release_ref, environment, change_type, strategy,
                  rollback_plan, risk, impact, on_call, scheduled_for, deploy_when_approved,
                  draft):
    """Request a change (submitted for approval unless --draft); prints its id."""
    body = {"release": release_id(obj, release_ref), "environment": environment,
            "change_type": change_type, "rollback_plan": rollback_plan, "risk": risk,
            "impact": impact, "deploy_when_approved": deploy_when_approved, "draft": draft}
    for name, value in (("strategy", strategy), ("on_call", on_call),
                        ("scheduled_for", scheduled_for)):
        if value:
            body[name] = value
    answer = obj.post("/changes/", body, key=obj.key("change create", **body))
    say(describe_change(answer.body))
    obj.emit(answer.body, str(answer.body["id"]))


@change.command("show")
@click.argument("change_id", type=int)
@click.pass_obj
def change_show(obj: Context, change_id):
    """Show a change: status, gates, blockers, fingerprint."""
    body = obj.portal.get(f"/changes/{change_id}/")
    say(describe_change(body))
    obj.emit(body, body.get("status"))


def decide(obj: Context, verb: str, change_id: int, gate: str, comment: str) -> None:
    # Decide on what was read: the portal refuses (409 changed_since_viewed) if the change
    # moved between this read and the decision.
    shown = obj.portal.get(f"/changes/{change_id}/")
    say(describe_change(shown))
    body = {"gate": gate, "comment": comment, "fingerprint": shown["fingerprint"]}
    answer = obj.post(f"/changes/{change_id}/{verb}", body,
                             key=obj.key(f"change {verb}", change=change_id, **body))
    say(f"{verb}d at {gate}: " + describe_change(answer.body))
    obj.emit(answer.body, answer.body.get("status"))


@change.command("approve")
@click.argument("change_id", type=int)
@click.option("--gate", "-g", required=True, help=GATES_HELP)
@click.option("--comment", "-m", default="", help="Why.")
@click.pass_obj
def change_approve(obj: Context, change_id, gate, comment):
    """Approve one gate of a change, on the version just read."""
    decide(obj, "approve", change_id, gate, comment)


@change.command("reject")
@click.argument("change_id", type=int)
@click.option("--gate", "-g", required=True, help=GATES_HELP)
@click.option("--comment", "-m", required=True, help="Why (required).")
@click.pass_obj
def change_reject(obj: Context, change_id, gate, comment):
    """Reject a change at one gate, on the version just read."""
    decide(obj, "reject", change_id, gate, comment)


# --- preflight --------------------------------------------------------------------------


@cli.command()
@click.option("--change", "change_id", type=int, default=None, help="An existing change.")
@click.option("--release", "-r", "release_ref", default=None,
              help="Release id or APPLICATION@VERSION (with --environment).")
@click.option("--environment", "-e", default=None)
@click.option("--type", "change_type", default="standard", show_default=True,
              help="standard, hotfix or emergency.")
@click.option("--at", default=None, help="When it would deploy (ISO 8601; default now).")
@click.option("--wait", is_flag=True, help="Poll until ready (or --wait-timeout).")
@click.option("--wait-timeout", default=3600.0, show_default=True, type=float)
@click.option("--interval", default=30.0, show_default=True, type=float)
@click.pass_obj
def preflight(obj: Context, change_id, release_ref, environment, change_type, at, wait,
              wait_timeout, interval):
    """What stands in the way of deploying; exit 0 when ready, 1 when not."""
    if change_id is None and not (release_ref and environment):
        raise click.UsageError("give --change, or --release and --environment")
    params = {"at": at}
    if change_id is not None:
        params["change"] = change_id
    else:
        params.update(release=release_id(obj, release_ref), environment=environment,
                      change_type=change_type)
    deadline = time.monotonic() + wait_timeout
    while True:
        result = obj.portal.get("/preflight/", **params)
        if result.get("ready"):
            say(f"ready to deploy {result.get('environment')} (at {result.get('at')})")
            obj.emit(result, "ready")
            sys.exit(OK)
        say("not ready: " + "; ".join(f"{b['code']}: {b['message']}"
                                      for b in result.get("blockers") or [])
            + f" (earliest {result.get('earliest')})")
        if not wait or time.monotonic() + interval > deadline:
            obj.emit(result, "not_ready")
            sys.exit(FAILED)
        time.sleep(interval)


# --- deploy -----------------------------------------------------------------------------


@cli.command()
@click.argument("change_id", type=int)
@click.option("--wait", is_flag=True, help="Follow the log until the deployment ends.")
@click.option("--wait-timeout", default=3600.0, show_default=True, type=float)
@click.option("--interval", default=2.0, show_default=True, type=float,
              help="Seconds between polls while following.")
@click.pass_obj
def deploy(obj: Context, change_id, wait, wait_timeout, interval):
    """Deploy an approved change; prints the deployment id. --wait follows it to the end:
    exit 0 succeeded, 1 failed, rolled back or cancelled."""
    answer = obj.post(f"/changes/{change_id}/deploy", None,
                             key=obj.key("deploy", change=change_id))
    deployment = answer.body["deployment"]
    say(f"deployment {deployment} {answer.body.get('status')}"
        + (" (already started by an earlier run of this step)" if answer.replayed else ""))
    if not wait:
        obj.emit(answer.body, str(deployment))
        return
    final = follow(obj, deployment, wait_timeout, interval)
    obj.emit(final, str(deployment))
    status = final.get("status")
    if status == "succeeded":
        say(f"deployment {deployment} succeeded")
        sys.exit(OK)
    if status in FINAL:
        say(f"deployment {deployment} {status}: {final.get('failure_reason') or ''}".rstrip())
    else:
        say(f"deployment {deployment} still {status} after {wait_timeout:g} s")
    sys.exit(FAILED)


def follow(obj: Context, deployment: int, wait_timeout: float, interval: float) -> dict:
    """Print the deployment's log lines as they come; return it once it ended."""
    after = 0
    deadline = time.monotonic() + wait_timeout
    attention_said = False
    while True:
        state = obj.portal.get(f"/deployments/{deployment}/")
        while True:  # every line written so far, a page at a time
            lines = obj.portal.get(f"/deployments/{deployment}/log", after=after)
            for line in lines:
                say(f"{line['at']} {line['level']:<7} {line['message']}")
                after = line["seq"]
            if not lines:
                break
        if state["status"] in FINAL or time.monotonic() >= deadline:
            return state
        if state["status"] == "needs_attention" and not attention_said:
            say("the deployment needs attention: on-call decides (retry the step, mark it "
                "done, or roll back); still following")
            attention_said = True
        time.sleep(interval)


# --- the policy document (docs/policies.md) -----------------------------------------------


@cli.group()
def policy():
    """The policy document: export the active one, test a file, propose a file."""


def _policy_text(path: str) -> str:
    try:
        return click.open_file(path, encoding="utf-8").read()
    except OSError as exc:
        raise click.UsageError(f"cannot read {path}: {exc.strerror}") from exc


@policy.command("export")
@click.option("--output", "-o", default="-", help="A file (default: stdout).")
@click.pass_obj
def policy_export(obj: Context, output):
    """Write the active policy document (its version and digest go to stderr)."""
    body = obj.portal.get("/policies/current")
    say(f"policy v{body['version']} digest {body['digest']}")
    if obj.as_json:
        obj.emit(body, None)
        return
    with click.open_file(output, "w", encoding="utf-8") as out:
        out.write(body["document"])


@policy.command("test")
@click.argument("file")
@click.pass_obj
def policy_test(obj: Context, file):
    """Check a document and run its examples; exit 1 if one fails."""
    text = _policy_text(file)
    answer = obj.post("/policies/test", {"document": text},
                      key=obj.key("policy test", digest=hashlib.sha256(text.encode()).hexdigest()))
    body = answer.body
    for problem in body.get("problems", []):
        say(f"INVALID {problem}")
    for failure in body["failures"]:
        say(f"FAIL {failure}")
    say(f"{'passed' if body['passed'] else 'FAILED'}: {body['examples']} example(s), "
        f"{len(body['failures'])} failure(s); digest {body['digest']}")
    obj.emit(body, body["digest"])
    if not body["passed"]:
        sys.exit(FAILED)


@policy.command("import")
@click.argument("file")
@click.option("--effective-at", default=None, help="When it binds once approved (ISO 8601).")
@click.option("--summary", default="", help="One line: what changes and why.")
@click.pass_obj
def policy_import(obj: Context, file, effective_at, summary):
    """Propose a document as the next version; prints its number."""
    text = _policy_text(file)
    body = {"document": text, "summary": summary}
    if effective_at:
        body["effective_at"] = effective_at
    answer = obj.post("/policies/", body, key=obj.key(
        "policy import", digest=hashlib.sha256(text.encode()).hexdigest(),
        effective_at=effective_at or ""))
    gates = ", ".join(f"{role} x {count}" for role, count in answer.body["gates"].items())
    say(f"proposed policy v{answer.body['version']} ({answer.body['status']}); "
        f"it needs {gates}")
    obj.emit(answer.body, str(answer.body["version"]))


@policy.command("backtest")
@click.argument("file")
@click.option("--months", default=6, show_default=True, type=click.IntRange(1, 24),
              help="How many months of changes to replay.")
@click.pass_obj
def policy_backtest(obj: Context, file, months):
    """Replay a document over past changes: counts per environment (stderr) and one
    line per change it would have treated otherwise (stdout)."""
    text = _policy_text(file)
    body = obj.post("/policies/backtest", {"document": text, "months": months},
                    key=obj.key("policy backtest", months=months,
                                digest=hashlib.sha256(text.encode()).hexdigest())).body
    counts = body["counts"]
    say(f"{counts['changes']} change(s) since {body['since'][:10]}, "
        f"{counts['differing']} treated otherwise")
    for slug, c in counts["by_environment"].items():
        say(f"  {slug}: {c['changes']} changes, {c['differing']} differ ({c['gates']} other "
            f"gates, {c['blocked']} blocked, {c['start_refused']} start refused, "
            f"{c['start_allowed']} start allowed)")
    if obj.as_json:
        obj.emit(body, None)
        return
    for d in body["differences"]:
        click.echo(f"{d['reference']} {d['environment']} {d['application']}: "
                   + "; ".join(_backtest_words(d)))
    if body["truncated"]:
        say(f"listed {len(body['differences'])} of {counts['differing']}")


def _backtest_words(d: dict) -> list[str]:
    def gates(g: dict) -> str:
        return ", ".join(f"{role} {n}" for role, n in g.items()) or "none"

    words = []
    if "gates" in d:
        words.append(f"gates {gates(d['gates']['active'])} -> {gates(d['gates']['proposed'])}")
    for blocker in (d.get("blockers") or {}).get("added", []):
        words.append(f"blocked: {blocker['reason']}")
    start = d.get("start")
    if start and not start["proposed"]:
        words.append("start refused" + (f", earliest {start['earliest']}"
                                        if start.get("earliest") else ""))
    elif start:
        words.append("start allowed")
    return words + [f"error: {e}" for e in d.get("errors", [])]


def main() -> None:
    try:
        cli.main(standalone_mode=False, prog_name="portalctl")
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(REFUSED)
    except click.Abort:
        say("aborted")
        sys.exit(FAILED)
    except Refused as exc:
        say(f"portalctl: {exc}")
        if "--json" in sys.argv[1:]:
            click.echo(json.dumps(exc.body or {"code": exc.code, "detail": exc.detail},
                                  indent=2, sort_keys=True))
        sys.exit(REFUSED)
    except PortalError as exc:
        say(f"portalctl: {exc}")
        sys.exit(exc.exit_code if exc.exit_code in (FAILED, UNREACHABLE) else FAILED)
    sys.exit(OK)


if __name__ == "__main__":
    main()
