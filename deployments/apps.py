from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "deployments"
    verbose_name = "Deployments"

    def ready(self) -> None:
        # A release deployed in an environment is seen by those who work there.
        from catalog.selectors import register_release_reach
        from deployments.selectors import releases_deployed_in

        register_release_reach(releases_deployed_in)

        # Log lines are purged with the audit trail, in the same batches.
        from audit.retention import register_purge
        from deployments.retention import log_lines_purge

        register_purge("deployments.log_lines", log_lines_purge)
