-- errands schema 7: headers.
--
-- The headers a client interceptor set at start (errands.client
-- StartActivityInput.headers: name -> Payload), kept with the execution and
-- handed to every attempt (ExecuteActivityInput.headers). NULL when the
-- start had none, as most do. The bytes are errands.converter's framing of
-- the names and payloads; the store never reads them.

ALTER TABLE executions ADD COLUMN headers BLOB;
