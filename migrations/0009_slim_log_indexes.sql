-- Every index on webhook_logs is written three times per event: by the insert, then by
-- the run's start and its finish, which change `status` and so are never HOT updates.
-- Two indexes earned less than that cost:
-- * `webhook_logs_job_id` served only the dead-letter hook's lookup of a dead job's log,
--   which now reads the log id from the job's payload (by primary key); only a payload
--   too broken to decode falls back to a scan by job id.
-- * `webhook_logs_status_event_source` served the counts by status, event type and
--   source; the status index now carries those two columns, so the counts stay one
--   index-only scan.
DROP INDEX webhook_logs_job_id;
DROP INDEX webhook_logs_status_event_source;
DROP INDEX webhook_logs_status;
CREATE INDEX webhook_logs_status ON webhook_logs (status, received_at DESC) INCLUDE (event_type, source);
