-- Contract section 13 (operator tools): search over the logs, and the conversation view.
--
-- Search (`GET /api/webhook-logs?q=`) is a case-insensitive substring match over a log's
-- message text, sender name, item id and dedup key, answered from a trigram index
-- (pg_trgm, part of PostgreSQL's contrib and a trusted extension: the database owner
-- may create it).
--
-- The searched text lives in its own table, written once by intake and never updated
-- (none of the four fields changes after intake). A trigram index on `webhook_logs`
-- itself would be written again by every transition of the log: its status is indexed,
-- so no update of a log is HOT and every index gets a new entry, and a GIN entry means
-- extracting every trigram of the text again, four times per event. Here it is paid once.
-- The fields are joined by U+001F, which nobody searches for, so a match never spans two
-- of them (core/src/logs/mod.rs `SEARCH_DOC` is the same expression; intake uses it).
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE webhook_log_text (
    log_id bigint PRIMARY KEY REFERENCES webhook_logs (id) ON DELETE CASCADE,
    doc    text NOT NULL
);

INSERT INTO webhook_log_text (log_id, doc)
SELECT id, concat_ws(chr(31), message_text, sender_name, item_id, dedup_key) FROM webhook_logs;

CREATE INDEX webhook_log_text_trgm ON webhook_log_text USING gin (doc gin_trgm_ops);

-- The conversation view (`GET /api/conversations/{key}`): one conversation's events in
-- the order received, and the delivery reports that name one of its replies' provider
-- message ids (only reports get an entry in the second index).
CREATE INDEX webhook_logs_conversation ON webhook_logs (conversation_key, received_at, id)
    WHERE conversation_key IS NOT NULL;
CREATE INDEX webhook_logs_report_item ON webhook_logs (item_id)
    WHERE handling = 'delivery_status';
