-- A batch write can fail after the engine took it (a timeout, a connection reset after
-- the commit). The processor then writes it again with the same deduplication token
-- (processor/sink.py `batch_token`), and the engine drops a block it has taken under that
-- token already. Replicated tables keep those tokens by default; plain MergeTree tables
-- keep none unless given a window: the tokens of the last 1,000 inserts per table, far
-- more than a batch's retries and a restart's replay write before the window moves on.
-- The window also drops an identical block inserted again without a token (a replay of
-- a backfill chunk), which the tables' ReplacingMergeTree keys would collapse anyway.
ALTER TABLE events MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE sessions MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE visitor_identities MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE funnel_state MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE funnel_transitions MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE funnel_transitions_by_time MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE dead_letters MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE processor_state MODIFY SETTING non_replicated_deduplication_window = 1000;
