"""The bundle benchmark runs, in a tiny configuration: its bundle builds and verifies."""

from bench.audit_bench import generate
from bench.bundle_bench import measure


def test_the_bundle_benchmark_builds_and_verifies_a_small_bundle(db, tmp_path):
    generate(40)
    ((size, seconds, _cpu, peak, _rss, zipped, verify, _vcpu),) = measure([30], tmp_path)
    assert size == 30 and seconds > 0 and peak > 0 and zipped > 0 and verify > 0
