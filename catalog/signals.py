"""Events of the catalogue, for the apps above it."""

from django.dispatch import Signal

# Sent after commit when something deployments run with changed in the catalogue: an
# application's executor or its settings, its targets in an environment, or an
# environment's deployment settings (deployments.inputs). Arguments: application_id and
# environment_id (None: every one), what (a sentence naming what changed). The approval
# workflow listens to reopen the gates whose concern changed.
deployment_inputs_changed = Signal()
