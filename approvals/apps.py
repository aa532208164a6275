from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Approvals"

    def ready(self) -> None:
        from approvals import receivers  # noqa: F401  (connects deployment_finished)
        from approvals.services import deployment_start_check
        from deployments.services import register_start_check

        # A deployment of a change that waited (in the queue, for a worker) starts only
        # if its approvals still count and match what it will run.
        register_start_check(deployment_start_check)

        # `verify_audit --policies` re-checks decisions against the policy they name.
        from approvals.policy_checks import verify_policies
        from audit.rechecks import register_recheck

        register_recheck("policies", verify_policies)
