"""The definitions the DORA figures share, as SQL, for the exact computation
(``reporting.metrics``), the daily roll-ups (``reporting.rollups``) and the figures
read from them (``reporting.rolled_figures``): one text, so the three always count the
same way. Placeholders: ``{step}``, ``{deployment}`` (quoted table names), and the
alias ``d`` (an ended deployment) joined to ``r`` (its release).
"""

# Columns of each ended deployment: completed (succeeded, or rolled back by its analysis
# with no failed step), a failure (failed or rolled back), and its lead time.
DEPLOYMENT_FACTS = """
           (d.status = 'succeeded' OR (d.status = 'rolled_back' AND NOT EXISTS (
               SELECT 1 FROM {step} s WHERE s.deployment_id = d.id AND s.status = 'failed'
           ))) AS completed,
           d.status IN ('failed', 'rolled_back') AS failure,
           EXTRACT(EPOCH FROM d.finished_at - COALESCE(r.committed_at, r.created_at))
               AS lead_seconds"""

# The time to restore of each failure in ``base``: until the next success of its
# application in its environment (an index look-up: deployment_running_idx).
TIMED = """timed AS (
    SELECT base.*, EXTRACT(EPOCH FROM fix.finished_at - base.finished_at) AS restore_seconds
    FROM base LEFT JOIN LATERAL (
        SELECT s.finished_at FROM {deployment} s
        WHERE base.failure AND s.application_id = base.application_id
          AND s.environment_id = base.environment_id AND s.status = 'succeeded'
          AND (s.finished_at, s.id) > (base.finished_at, base.id)
        ORDER BY s.finished_at, s.id LIMIT 1
    ) fix ON TRUE
)"""
