"""A 4-host canary over SSH (through a bastion) against the same canary on the local
executor, in the same run, on the same worker.

    .venv/bin/python bench/ssh_bench.py [--rounds 3] [--json out.json]

Starts real OpenSSH servers (testkit/sshd.py: four hosts and a bastion on loopback, as
`make test` does; run scripts/ensure-sshd first), a worker of the bench environment
holding that environment's client key, and deploys per round a release to both
applications (all at once), then a canary of the next release (5 %, 50 %, 100 % with
health analysis after each phase, 10 samples per target). Prints the median canary time
of each executor and their ratio: what SSH, the bastion, the artifact's delivery and
check on every host, and the signed statement cost on top of the same steps on this
machine's disk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import engine  # noqa: E402

KEY_VARIABLE = "BENCH_TELLER_SSH_KEY"


def _release(app, user, version: str, into: Path):
    from catalog.models import Release

    artifact = into / f"{app.slug}-{version}.json"
    artifact.write_text(json.dumps({"error_rate": 0.0}))
    return Release.objects.create(
        application=app, version=version, created_by=user, artifact_url=artifact.as_uri(),
        artifact_sha256=hashlib.sha256(artifact.read_bytes()).hexdigest())


def _deploy(user, env, app, version: str, strategy: str, into: Path) -> float:
    from django.db import transaction

    from deployments import services

    release = _release(app, user, version, into)
    with transaction.atomic():
        deployment = services.deployment_create(actor=user, release=release,
                                                environment=env, strategy=strategy)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        deployment.refresh_from_db()
        if deployment.is_final:
            break
        time.sleep(0.1)
    if deployment.status != "succeeded":
        raise SystemExit(f"{app.slug} {version} {strategy}: {deployment.status}: "
                         f"{deployment.failure_reason}")
    return (deployment.finished_at - deployment.started_at).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ssh-bench-"))
    os.environ.setdefault("PORTAL_DEPLOY_ROOT", str(work / "deploy"))
    os.environ.setdefault("PORTAL_ARTIFACT_SOURCES", work.as_uri() + "/")
    os.environ["PORTAL_OUTBOUND_ALLOW"] = "127.0.0.0/8"
    engine.setup("portal_bench_ssh")

    from catalog import services as catalog
    from catalog.models import Application, Target
    from testkit.ssh_kit import free_port_on, install_kit, standard_commands
    from testkit.sshd import start_fleet

    fleet = start_fleet(work / "fleet", 4, bastion=True)
    worker = None
    try:
        kit, _ = install_kit(fleet)
        port = free_port_on([h.address for h in fleet.hosts])
        user, env, _ = engine.make_applications(0, commands={})
        user.is_superuser = True
        user.save()
        env.deploy_settings = {"ssh": {
            "client_key": "${env:" + KEY_VARIABLE + "}",
            "jump_host": f"{fleet.bastion.user}@{fleet.bastion.address}:{fleet.bastion.port}"}}
        env.save()
        for line in fleet.known_hosts_text.splitlines():
            if line.strip():
                catalog.host_key_pin(actor=user, environment=env, line=line)
        analysis = {"enabled": True, "samples": 10}
        ssh_app = Application.objects.create(slug="teller", name="Teller", executor="ssh",
                                             executor_settings={
            "commands": standard_commands(kit, port), "analysis": analysis,
            "upload_dir": f"{Path(fleet.hosts[0].root).parent.parent}/{{target}}/root/inbox",
            "health_url": f"http://{{host}}:{port}"})
        local_app = Application.objects.create(slug="storefront", name="Storefront",
                                               executor="local", executor_settings={
            "fleet": "demo", "analysis": analysis})
        for host in fleet.hosts:
            Target.objects.create(application=ssh_app, environment=env, name=host.name,
                                  address=f"{host.user}@{host.address}:{host.port}")
            Target.objects.create(application=local_app, environment=env, name=host.name,
                                  address="127.0.0.1")
        os.environ[KEY_VARIABLE] = fleet.client_key_pem
        worker = engine.start_worker(concurrency=1, name="ssh-bench")
        times: dict[str, list[float]] = {"ssh": [], "local": []}
        for n in range(1, args.rounds + 1):
            for kind, app in (("ssh", ssh_app), ("local", local_app)):
                _deploy(user, env, app, f"{n}.0.0", "all_at_once", work)
                times[kind].append(_deploy(user, env, app, f"{n}.1.0", "canary", work))
                print(f"round {n}: {kind:5} canary {times[kind][-1]:.2f} s", flush=True)
        ssh, local = statistics.median(times["ssh"]), statistics.median(times["local"])
        result = {"rounds": args.rounds, "hosts": 4, "ssh_s": times["ssh"],
                  "local_s": times["local"], "ssh_median_s": round(ssh, 2),
                  "local_median_s": round(local, 2), "ratio": round(ssh / local, 2)}
        print(f"4-host canary, median of {args.rounds}: over SSH through a bastion "
              f"{ssh:.2f} s, local executor {local:.2f} s, ratio {ssh / local:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    finally:
        if worker is not None:
            engine.stop_worker(worker)
        import demo_fleet

        demo_fleet.stop_all(Path(os.environ["PORTAL_DEPLOY_ROOT"]))
        fleet.stop()


if __name__ == "__main__":
    main()
