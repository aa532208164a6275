from django.dispatch import Signal

# Sent after commit when a deployment reaches a final status.
# Arguments: deployment (a Deployment), status (its final status).
deployment_finished = Signal()
