-- errands schema 4: reset and update_options.
--
-- attempt stays the attempt's serial, which fences late reports and never
-- repeats within a run; a reset makes the next attempt number 1 by moving
-- attempt_base (the number users see is attempt - attempt_base).
-- A running attempt keeps the start_to_close and heartbeat timeouts it
-- started with (attempt_*), so that update_options changes the next attempt's.
-- original_options: the start's options (JSON), kept from the first update
-- on, for restore_original_options.

ALTER TABLE executions ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN attempt_start_to_close_s REAL;
ALTER TABLE executions ADD COLUMN attempt_heartbeat_s REAL;
ALTER TABLE executions ADD COLUMN original_options TEXT;
UPDATE executions SET attempt_start_to_close_s = start_to_close_s, attempt_heartbeat_s = heartbeat_s
WHERE run_state IN ('STARTED', 'CANCEL_REQUESTED', 'PAUSE_REQUESTED');

-- The attempt's number as users see it (attempt is its serial), and the
-- timeout that ended it, if one did.
ALTER TABLE attempts ADD COLUMN attempt_number INTEGER;
ALTER TABLE attempts ADD COLUMN timeout_type INTEGER;
UPDATE attempts SET attempt_number = attempt;
