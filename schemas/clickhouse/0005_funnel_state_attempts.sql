-- Funnels counting total attempts (`counting: "total"`): per step, how many of the
-- visitor's attempts reached it. Empty for funnels counting unique visitors.
ALTER TABLE funnel_state ADD COLUMN IF NOT EXISTS step_attempts Array(UInt32) AFTER step_reached_at;
