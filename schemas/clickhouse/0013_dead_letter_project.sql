-- The project a dead letter belongs to, read from its log key (`project \x1f visitor`,
-- schemas/events.py), so /v1/stats counts a project's dead letters and no other's. Rows
-- written before this have '' and are counted by no project.
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS project_id String DEFAULT '';
