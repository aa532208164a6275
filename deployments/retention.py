"""Deployment log lines are kept as long as the audit trail (SOP 13.1): the trail's
retention purge deletes the expired ones in each of its batches
(``audit.retention.register_purge``, registered in ``DeploymentsConfig.ready``)."""

from __future__ import annotations

from datetime import datetime

from django.db import connection


def log_lines_purge(*, cutoff: datetime, batch_size: int) -> int:
    """Delete at most ``batch_size`` log lines written before ``cutoff``, oldest first;
    runs inside the purge's transaction, whose flag lets the append-only trigger accept
    it. Answers how many went."""
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM deployments_deploymentlogline WHERE id IN ("
            " SELECT id FROM deployments_deploymentlogline WHERE at < %s ORDER BY id LIMIT %s)",
            [cutoff, batch_size],
        )
        return cursor.rowcount
