-- errands schema 2: the change feed (NOTIFY payloads naming each change)
-- replaces the interrupt log; interrupts are read from the executions.
DROP TABLE interrupts;
