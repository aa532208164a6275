"""The catalogue's state changes, one module per topic; callers import from here."""

from catalog.services.artifacts import (
    artifact_display,
    artifact_source_check,
    artifact_url_pattern,
)
from catalog.services.environments import environment_lock, environment_unlock
from catalog.services.host_keys import (
    fingerprint_of,
    host_key_pin,
    host_key_remove,
    host_pattern,
    parse_known_hosts_line,
)
from catalog.services.inputs import deployment_inputs_edited
from catalog.services.releases import RELEASE_FIELDS, release_register

__all__ = ["RELEASE_FIELDS", "artifact_display", "artifact_source_check", "artifact_url_pattern",
           "deployment_inputs_edited", "environment_lock", "environment_unlock",
           "fingerprint_of", "host_key_pin", "host_key_remove", "host_pattern",
           "parse_known_hosts_line", "release_register"]
