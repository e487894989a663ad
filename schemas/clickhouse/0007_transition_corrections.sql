-- Late events re-fold their visitor (processor/refold.py) and correct its transitions: a
-- transition the re-fold no longer makes is written again as 'retracted', the one it makes
-- instead as 'corrected' (after the retraction). Rows written as they happened are
-- 'reached'. Readers of the table's last row per key skip retracted rows.
ALTER TABLE funnel_transitions ADD COLUMN IF NOT EXISTS kind Enum8('reached' = 0, 'retracted' = 1, 'corrected' = 2) DEFAULT 'reached';
ALTER TABLE funnel_transitions_by_time ADD COLUMN IF NOT EXISTS kind Enum8('reached' = 0, 'retracted' = 1, 'corrected' = 2) DEFAULT 'reached';

-- The copy ordered by time carries the kind too: the view is replaced with one that
-- selects it.
DROP VIEW IF EXISTS funnel_transitions_by_time_mv;
CREATE MATERIALIZED VIEW IF NOT EXISTS funnel_transitions_by_time_mv
TO funnel_transitions_by_time
AS SELECT project_id, funnel_id, visitor_id, step, reached_at, chain_started_at, event_id,
          processed_at, kind
FROM funnel_transitions;
