"""Load benchmark: concurrent users with mixed traffic against a running portal, next
to /healthz on the same server in the same run.

    PORTAL_VAR_DIR=var/run PORTAL_PG_PORT=... PORTAL_REDIS_PORT=... PORTAL_PORT=8245 make run
    .venv/bin/python bench/load_bench.py --url http://127.0.0.1:8245 --users 50 --seconds 60

Each user is a bounded asyncio loop on one httpx connection, with a CAB member's
session for the pages and an API token issued by the portal's own token page for the
API (both made once before the clock starts); it picks a request by weight
and sends it at once when the answer arrives (a closed
loop: no think time, so the figure is the server's throughput). The traffic:

- the approvals inbox as a CAB member (``cab``, ``cab2``), the change page, the
  change list, ``GET /api/v1/changes/``;
- ``POST /api/v1/changes/`` (a standard change to staging, as ``engineer``) and
  ``POST /api/v1/changes/<id>/approve`` (its tech-lead gate, as ``techlead``).

Then the same users hit ``/healthz`` for the same time (the bare stack: Django,
one trivial view, no database work). Results: one Markdown table on stdout.

With ``--think 5 15`` the users are people with think time instead: each sends one
request of the same mix, then waits 5 to 15 s (uniform, seeded by ``--seed``) before
the next. N people (``--people FIRST STEP LAST``) run ``--seconds`` per step, N growing
until the p95 reaches ``--p95-limit-ms`` (500): the largest N under it is printed,
with the ratios of its median and p95 to /healthz's in the same run (``--users``
closed-loop clients after the steps)::

    .venv/bin/python bench/load_bench.py --think 5 15 --people 40 40 1000 --seconds 45
Users need the demo's passwords (``PORTAL_DEMO_PASSWORD``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import sys
import time
from collections import defaultdict

import httpx

# The demo's default password (seed_demo.DEFAULT_PASSWORD) unless the run set another.
PASSWORD = os.environ.get("PORTAL_DEMO_PASSWORD", "demo-portal-2026")
# The demo's authenticator secret (settings.PORTAL_DEMO_TOTP_SECRET's default).
DEMO_TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
WEIGHTS = {"inbox": 20, "change page": 25, "change list": 15, "api list": 25,
           "api create": 8, "api approve": 7}


class Stats:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)

    def add(self, name: str, seconds: float, error: str | None = None) -> None:
        self.latencies[name].append(seconds)
        if error:
            self.errors[name].append(error)

    def rows(self, elapsed: float):
        every = [s for values in self.latencies.values() for s in values]
        for name, values in sorted(self.latencies.items()) + [("all", every)]:
            if not values:
                continue
            values = sorted(values)
            errors = (sum(len(e) for e in self.errors.values()) if name == "all"
                      else len(self.errors.get(name, [])))
            yield (name, len(values), len(values) / elapsed, statistics.median(values),
                   values[min(len(values) - 1, int(len(values) * 0.95))], errors)


async def sign_in(client: httpx.AsyncClient, username: str) -> None:
    page = await client.get("/login/")
    token = client.cookies.get("csrftoken")
    response = await client.post("/login/", data={
        "username": username, "password": PASSWORD, "csrfmiddlewaretoken": token,
    }, headers={"Referer": str(page.url)})
    if response.status_code != 302:
        raise SystemExit(f"signing in as {username} failed ({response.status_code}); "
                         "set PORTAL_DEMO_PASSWORD")
    if response.headers.get("location", "").startswith("/accounts/2fa/authenticate"):
        await second_factor(client, username)


async def second_factor(client: httpx.AsyncClient, username: str) -> None:
    """Answer the authenticator-code stage as the demo's people do (PORTAL_DEMO_TOTP_SECRET).

    A code is accepted once per person, so a second sign-in within the same period waits
    for the next code, as a person would."""
    import pyotp

    totp = pyotp.TOTP(os.environ.get("PORTAL_DEMO_TOTP_SECRET", DEMO_TOTP_SECRET))
    url = "/accounts/2fa/authenticate/"
    for _ in range(3):
        await client.get(url)
        response = await client.post(url, data={
            "code": totp.now(), "csrfmiddlewaretoken": client.cookies.get("csrftoken"),
        }, headers={"Referer": str(client.base_url) + url})
        if response.status_code == 302:
            return
        await asyncio.sleep(totp.interval - time.time() % totp.interval + 0.5)
    raise SystemExit(f"the authenticator code for {username} was refused; "
                     "set PORTAL_DEMO_TOTP_SECRET")


async def issue_token(client: httpx.AsyncClient, name: str) -> str:
    """An API token from the token page, as a person would issue one."""
    await client.get("/tokens/")
    response = await client.post("/tokens/", data={
        "name": name, "scopes": ["read", "request", "approve"], "days": "1",
        "csrfmiddlewaretoken": client.cookies.get("csrftoken"),
    }, headers={"Referer": str(client.base_url) + "/tokens/"})
    found = re.search(r'id="new-token">([^<]+)<', response.text)
    if not found:
        raise SystemExit("could not issue an API token on /tokens/; "
                         f"the page answered {response.status_code}")
    return found.group(1)


class World:
    """What the users share: change ids to open, releases to request, changes to approve."""

    def __init__(self, change_ids: list[int], release_ids: list[int]) -> None:
        self.change_ids = change_ids
        self.release_ids = release_ids
        self.to_approve: asyncio.Queue[int] = asyncio.Queue()
        self.sessions: dict[str, httpx.Cookies] = {}


async def one_request(client: httpx.AsyncClient, world: World, tokens: dict[str, str],
                      rng: random.Random, stats: Stats) -> None:
    """One request of the mix, picked by weight; its time goes to ``stats``."""
    names, weights = zip(*WEIGHTS.items(), strict=True)
    name = rng.choices(names, weights)[0]
    if name == "api approve" and world.to_approve.empty():
        name = "api create"
    t0 = time.perf_counter()
    error = None
    try:
        if name == "inbox":
            response = await client.get("/approvals/")
        elif name == "change page":
            response = await client.get(f"/changes/{rng.choice(world.change_ids)}/")
        elif name == "change list":
            response = await client.get("/changes/")
        elif name == "api list":
            response = await client.get("/api/v1/changes/", headers={
                "Authorization": f"Bearer {tokens['engineer']}"})
        elif name == "api create":
            response = await client.post("/api/v1/changes/", json={
                "release": rng.choice(world.release_ids), "environment": "staging",
                "rollback_plan": "Redeploy the previous release.",
            }, headers={"Authorization": f"Bearer {tokens['engineer']}"})
            if response.status_code == 201:
                world.to_approve.put_nowait(response.json()["id"])
        else:
            pk = world.to_approve.get_nowait()
            response = await client.post(f"/api/v1/changes/{pk}/approve", json={
                "gate": "tech_lead"}, headers={
                "Authorization": f"Bearer {tokens['techlead']}"})
        if response.status_code >= 300 and not (name == "api create"
                                                and response.status_code == 201):
            error = f"{response.status_code} {response.text[:120]}"
    except httpx.HTTPError as exc:
        error = repr(exc)
    stats.add(name, time.perf_counter() - t0, error)


def _client(url: str, index: int, world: World) -> httpx.AsyncClient:
    # The users share the two CAB members' sessions: signing in (a deliberately slow
    # password hash) is not the traffic measured.
    cookies = world.sessions["cab" if index % 2 else "cab2"]
    return httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=1), timeout=30,
                             cookies=cookies, follow_redirects=False)


async def user(index: int, url: str, world: World, stats: Stats, deadline: float,
               tokens: dict[str, str], rng: random.Random) -> None:
    """A closed-loop user: the next request as soon as the answer arrives."""
    async with _client(url, index, world) as client:
        while time.perf_counter() < deadline:
            await one_request(client, world, tokens, rng, stats)


async def person(index: int, url: str, world: World, stats: Stats, deadline: float,
                 tokens: dict[str, str], rng: random.Random,
                 think: tuple[float, float]) -> None:
    """A person with think time: one request, then ``think`` seconds (uniform, seeded)
    before the next; the first one comes at a random moment of the first pause, so
    people do not arrive in step."""
    async with _client(url, index, world) as client:
        await asyncio.sleep(rng.uniform(0, think[1]))
        while time.perf_counter() < deadline:
            await one_request(client, world, tokens, rng, stats)
            pause = rng.uniform(*think)
            if time.perf_counter() + pause >= deadline:
                return
            await asyncio.sleep(pause)


async def healthz_user(url: str, stats: Stats, deadline: float) -> None:
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=1),
                                 timeout=30) as client:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            error = None
            try:
                response = await client.get("/healthz")
                if response.status_code != 200:
                    error = str(response.status_code)
            except httpx.HTTPError as exc:
                error = repr(exc)
            stats.add("healthz", time.perf_counter() - t0, error)


async def prepare(url: str) -> tuple[World, dict[str, str]]:
    tokens = {}
    for username in ("engineer", "techlead", "cab"):
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            await sign_in(client, username)
            tokens[username] = await issue_token(client, f"load-{username}-{time.time_ns()}")
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        headers = {"Authorization": f"Bearer {tokens['engineer']}"}
        # Changes the CAB members may open (the pages are theirs).
        body = (await client.get("/api/v1/changes/", headers={
            "Authorization": f"Bearer {tokens['cab']}"})).json()
        change_ids = [c["id"] for c in body["results"]]
        releases = (await client.get("/api/v1/releases/", headers=headers)).json()
        release_ids = [r["id"] for r in releases["results"]]
    if not change_ids or not release_ids:
        raise SystemExit("the portal has no changes or releases to work on")
    world = World(change_ids, release_ids)
    for username in ("cab", "cab2"):
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            await sign_in(client, username)
            world.sessions[username] = httpx.Cookies(client.cookies)
    return world, tokens


def server_processes(url: str) -> list:
    """The web server's processes (gunicorn's master and workers bound to ``url``'s
    port), to read the CPU time they spend per request; [] when not found."""
    import psutil

    port = httpx.URL(url).port
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "gunicorn" in cmdline and f":{port}" in cmdline:
            found.append(proc)
            found += proc.children(recursive=True)
    return list({p.pid: p for p in found}.values())


def cpu_seconds(processes: list) -> float:
    total = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except Exception:  # noqa: BLE001 - a worker restarted: its time is lost
            pass
    return total


async def run(url: str, users: int, seconds: float) -> list:
    world, tokens = await prepare(url)
    processes = server_processes(url)
    results = []
    for phase in ("mixed", "healthz"):
        stats = Stats()
        cpu_before = cpu_seconds(processes)
        start = time.perf_counter()
        deadline = start + seconds
        if phase == "mixed":
            tasks = [user(i, url, world, stats, deadline, tokens, random.Random(i))
                     for i in range(users)]
        else:
            tasks = [healthz_user(url, stats, deadline) for _ in range(users)]
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(processes) - cpu_before if processes else None
        results.append((phase, list(stats.rows(elapsed)), stats.errors, cpu))
    return results


async def run_think_time(url: str, *, people: tuple[int, int, int], seconds: float,
                         think: tuple[float, float], seed: int, limit: float,
                         health_users: int) -> tuple[list, tuple | None]:
    """Steps of N people with think time (``people``: first N, step, last N), each step
    ``seconds`` long, until the p95 reaches ``limit``; then /healthz closed-loop from
    ``health_users`` clients for the same time, in the same run."""
    world, tokens = await prepare(url)
    # Warm-up, not measured: each server thread's first pages compile their templates.
    async with _client(url, 0, world) as client:
        warm = random.Random(seed)
        for _ in range(30):
            await one_request(client, world, tokens, warm, Stats())
    first, step, most = people
    steps = []
    last_rows: list = []
    count = first
    while count <= most:
        stats = Stats()
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*[
            person(i, url, world, stats, deadline, tokens, random.Random(seed * 1_000_003 + i),
                   think) for i in range(count)])
        rows = list(stats.rows(time.perf_counter() - start))
        every = next(row for row in rows if row[0] == "all")
        steps.append((count, *every[1:]))
        last_rows = rows
        if every[4] >= limit:
            break
        count += step
    stats = Stats()
    start = time.perf_counter()
    await asyncio.gather(*[healthz_user(url, stats, start + seconds)
                           for _ in range(health_users)])
    health = next((row for row in stats.rows(time.perf_counter() - start)
                   if row[0] == "all"), None)
    for name, requests, _, median, p95, _ in last_rows:  # where the last step's time went
        print(f"  last step, {name}: {requests} requests, median {median * 1000:.0f} ms, "
              f"p95 {p95 * 1000:.0f} ms", file=sys.stderr)
    return steps, health


def think_time_report(steps: list, health: tuple | None, *, limit: float,
                      think: tuple[float, float], seconds: float) -> int:
    """The steps as a Markdown table, the largest N under the limit and the ratios to
    /healthz of the same run."""
    health_p95 = health[4] if health else None
    health_median = health[3] if health else None
    print(f"people with think time {think[0]:g}-{think[1]:g} s, {seconds:.0f} s per step")
    print("| people | requests | requests/s | median (ms) | p95 (ms) | p95 x /healthz p95 "
          "| errors |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    failed = 0
    for count, requests, rate, median, p95, errors in steps:
        ratio = f"{p95 / health_p95:.1f}" if health_p95 else "-"
        print(f"| {count} | {requests} | {rate:.1f} | {median * 1000:.0f} | {p95 * 1000:.0f} "
              f"| {ratio} | {errors} |")
        failed += errors
    if health:
        print(f"/healthz closed loop: {health[2]:.0f} requests/s, median "
              f"{health_median * 1000:.1f} ms, p95 {health_p95 * 1000:.1f} ms")
    passed = [row for row in steps if row[4] < limit]
    if passed:
        count, _, rate, median, p95, _ = passed[-1]
        ratio = (f"; median {median / health_median:.1f} x and p95 {p95 / health_p95:.1f} x "
                 "/healthz's" if health else "")
        print(f"largest N with p95 < {limit * 1000:.0f} ms: {count} people "
              f"({rate:.1f} requests/s, p95 {p95 * 1000:.0f} ms{ratio})")
    else:
        print(f"no step kept p95 under {limit * 1000:.0f} ms")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORTAL_PORT', 8000)}")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--think", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="people with think time: each waits MIN-MAX s (uniform) between "
                             "requests; finds the largest N with p95 under --p95-limit-ms")
    parser.add_argument("--people", type=int, nargs=3, default=(20, 20, 1000),
                        metavar=("FIRST", "STEP", "LAST"), help="N people per step (--think)")
    parser.add_argument("--p95-limit-ms", type=float, default=500)
    parser.add_argument("--seed", type=int, default=26, help="the people's random pauses")
    args = parser.parse_args(argv)
    if args.think:
        limit = args.p95_limit_ms / 1000
        steps, health = asyncio.run(run_think_time(
            args.url.rstrip("/"), people=tuple(args.people), seconds=args.seconds,
            think=tuple(args.think), seed=args.seed, limit=limit, health_users=args.users))
        return think_time_report(steps, health, limit=limit, think=tuple(args.think),
                                 seconds=args.seconds)
    results = asyncio.run(run(args.url.rstrip("/"), args.users, args.seconds))
    print(f"{args.users} users, {args.seconds:.0f} s per phase, {args.url}")
    print("| phase | request | count | requests/s | median (ms) | p95 (ms) | errors |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    failed = 0
    cpu_lines = []
    for phase, rows, errors, cpu in results:
        for name, count, rate, median, p95, n_errors in rows:
            print(f"| {phase} | {name} | {count} | {rate:.1f} | {median * 1000:.0f} | "
                  f"{p95 * 1000:.0f} | {n_errors} |")
            if name == "all":
                failed += n_errors
                if cpu is not None and count:
                    cpu_lines.append(f"{phase}: web server CPU {cpu:.1f} s for {count} "
                                     f"requests, {cpu / count * 1000:.1f} ms a request")
        for name, messages in errors.items():
            for message in sorted(set(messages))[:3]:
                print(f"  {phase} {name}: {message}", file=sys.stderr)
    for line in cpu_lines:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
