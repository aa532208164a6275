"""Celery beat's schedule: the periodic tasks of every app and how often they run.

Settings import it as ``CELERY_BEAT_SCHEDULE``; intervals that operators tune are
read from the environment like the rest of the settings.
"""

import environ

env = environ.Env()

BEAT_SCHEDULE = {
    "start-scheduled-changes": {"task": "approvals.tasks.changes_start_scheduled",
                                "schedule": 30.0},
    # Approve-by and start-by deadlines and their warnings (docs/cab.md).
    "enforce-approval-deadlines": {"task": "approvals.tasks.approvals_enforce_deadlines",
                                   "schedule": 60.0},
    "plan-cab-meetings": {"task": "approvals.tasks.cab_meetings_plan", "schedule": 300.0},
    # An approved policy version binds at its time (docs/policies.md).
    "activate-due-policies": {"task": "approvals.tasks.policies_activate_due",
                              "schedule": 60.0},
    "resume-stale-deployments": {
        "task": "deployments.tasks.deployments_resume_stale",
        "schedule": env.float("PORTAL_RESUME_SWEEP_SECONDS", default=5.0),
    },
    "backup-portal-database": {
        "task": "portal.tasks.portal_backup",
        "schedule": env.float("PORTAL_BACKUP_INTERVAL_SECONDS", default=24 * 3600.0),
    },
    "audit-retention-purge": {"task": "audit.tasks.audit_retention_purge",
                              "schedule": 24 * 3600.0},
    # The notifications outbox: rows written with their decision whose queued send
    # never came (the process died after commit, the broker was down) are sent.
    "notifications-send-unsent": {
        "task": "notifications.tasks.notifications_send_unsent",
        "schedule": env.float("PORTAL_OUTBOX_SWEEP_SECONDS", default=30.0),
    },
    "notifications-settle-interrupted": {
        "task": "notifications.tasks.notifications_settle_interrupted", "schedule": 300.0},
    # A change left deploying after its deployment ended (a listener failed) is closed.
    "close-changes-of-finished-deployments": {"task": "approvals.tasks.changes_close_finished",
                                              "schedule": 60.0},
    "idempotency-keys-purge": {"task": "core.tasks.idempotency_keys_purge", "schedule": 3600.0},
    "hook-deliveries-purge": {"task": "integrations.tasks.hook_deliveries_purge",
                              "schedule": 3600.0},
    # Signed checkpoints of the audit chain, handed to the witnesses (docs/audit.md).
    "audit-checkpoint-sign": {
        "task": "audit.tasks.audit_checkpoint_sign",
        "schedule": env.float("PORTAL_AUDIT_CHECKPOINT_SECONDS", default=60.0),
    },
}
