"""The catalogue's state changes, one module per topic; callers import from here."""

from catalog.services.environments import environment_lock, environment_unlock
from catalog.services.inputs import deployment_inputs_edited

__all__ = ["deployment_inputs_edited", "environment_lock", "environment_unlock"]
