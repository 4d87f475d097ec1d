-- errands schema 9 (SQLite): the change-log position of each close.
--
-- A transaction that closes an execution sets close_seq to the next position
-- of the changes table (its writers take turns, so every change it announces
-- comes at or after it). Another process awaiting results then reads the
-- runs closed since the position it saw last, instead of the state of every
-- run it awaits (which grew with the number awaited).

ALTER TABLE executions ADD COLUMN close_seq INTEGER;
CREATE INDEX executions_close_seq ON executions (close_seq) WHERE close_seq IS NOT NULL;
