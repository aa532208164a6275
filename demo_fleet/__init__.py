"""The demo fleet: a tiny HTTP service the local executor runs per target on loopback.

Each instance serves ``/health`` and a page for the release it was started from. A
release can carry a behaviour file (any ``*.json`` artifact other than the manifest)
with ``error_rate`` (0 to 1), ``latency_ms`` and ``healthy``: the "bad" demo version
answers with errors, so canary analysis and automatic rollback can be seen for real.
"""

from demo_fleet.control import (
    instance_info,
    resume_all,
    start_instance,
    stop_all,
    stop_instance,
    suspend_all,
)

__all__ = ["instance_info", "resume_all", "start_instance", "stop_all", "stop_instance",
           "suspend_all"]
