-- Retention (funnelstream/retention.py) expires rows by a time column per table. The
-- processor's visitor states had none: this is when the row was written (a state is
-- written again with each event the visitor sends, so it goes once the visitor has been
-- quiet for the project's retention). Rows written before this migration get the time it
-- ran.
ALTER TABLE processor_state ADD COLUMN IF NOT EXISTS written_at DateTime DEFAULT now();
