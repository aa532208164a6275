from django.dispatch import Signal

# Sent after commit when a deployment reaches a final status.
# Arguments: deployment (a Deployment), status (its final status).
deployment_finished = Signal()

# Sent inside the transaction that makes a deployment final, in a savepoint of its
# own: what a listener records there commits with the deployment's end, and a
# listener that fails undoes only its own work (a beat task settles what it left).
# Arguments: deployment (a Deployment), status (its final status).
deployment_ending = Signal()
