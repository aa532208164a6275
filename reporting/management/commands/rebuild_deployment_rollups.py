"""Recompute the daily roll-ups of the DORA figures from the deployments.

    manage.py rebuild_deployment_rollups            # the whole history
    manage.py rebuild_deployment_rollups --days 3   # the last three days

Safe to run at any time and as often as wished: a day is recomputed, never added to.
"""

from __future__ import annotations

import time
from datetime import timedelta

from django.core.management.base import BaseCommand

from core import clock
from reporting import rollups


class Command(BaseCommand):
    help = "Recompute the daily roll-ups of the DORA figures from the deployments."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=None,
                            help="only the last DAYS days (default: the whole history)")

    def handle(self, *args, days=None, **options):
        since = None
        if days is not None:
            since = rollups.local_day(clock.now()) - timedelta(days=max(days - 1, 0))
        started = time.perf_counter()
        rows = rollups.rebuild(since=since)
        self.stdout.write(f"{rows} daily roll-ups in {time.perf_counter() - started:.1f} s")
