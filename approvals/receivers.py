"""Hears from the deployments app when a deployment ends (DESIGN.md section 3)."""

from django.dispatch import receiver

from catalog.signals import deployment_inputs_changed
from configuration.signals import configuration_changed
from deployments.models import Deployment
from deployments.signals import deployment_ending


# In the transaction that ends the deployment: the change closes with it. Should this
# fail, the deployment still ends and approvals.services.changes_close_finished (beat)
# closes the change.
@receiver(deployment_ending, sender=Deployment, dispatch_uid="approvals.close_change")
def close_change_on_deployment_finished(sender, deployment, status, **kwargs):
    # Looked up in approvals.services.closing at each call, where the beat
    # (changes_close_finished) finds it too: both close a change the same way.
    from approvals.services import closing

    closing.change_request_deployment_finished(deployment=deployment, status=status)


@receiver(configuration_changed, dispatch_uid="approvals.reopen_on_configuration")
def reopen_gates_when_configuration_changes(sender, version, **kwargs):
    from approvals.services import changes_reopen_for_configuration

    changes_reopen_for_configuration(application_id=version.application_id,
                                     environment_id=version.environment_id)


@receiver(deployment_inputs_changed, dispatch_uid="approvals.reopen_on_deployment_inputs")
def reopen_gates_when_deployment_inputs_change(sender, application_id, environment_id, what,
                                               **kwargs):
    from approvals.services import changes_reopen_for_deployment_inputs

    changes_reopen_for_deployment_inputs(application_id=application_id,
                                         environment_id=environment_id, why=what)
