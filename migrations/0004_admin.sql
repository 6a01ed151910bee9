-- The operator's surface (admin API, dashboard, metrics, retention): indexes for the
-- reads they make, so every one stays an index scan at millions of rows.

-- Counts by status, event type and source in one index-only scan (stats, /metrics,
-- the dashboard's counters) instead of a scan of the heap with its jsonb payloads.
CREATE INDEX webhook_logs_status_event_source ON webhook_logs (status, event_type, source);

-- The dashboard's live feed polls `updated_at > last seen`; the throughput chart and
-- "failed in the last minute" read recent changes by time.
CREATE INDEX webhook_logs_updated_at ON webhook_logs (updated_at);

-- List filter by source, newest first.
CREATE INDEX webhook_logs_source ON webhook_logs (source, received_at DESC);

-- Processing-time stats read received_at and attempts next to processed_at: covering, so the
-- window is an index-only scan.
CREATE INDEX webhook_logs_processed_window ON webhook_logs (processed_at)
    INCLUDE (received_at, attempts) WHERE status = 'processed';
-- ...which also serves retention's scan (status = 'processed' AND processed_at < cutoff),
-- so the narrower index from 0001 only costs writes now.
DROP INDEX IF EXISTS webhook_logs_processed_at;
