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

--
-- No foreign key to the log: its check locks the log row just inserted (`FOR KEY SHARE`,
-- a heap write and a WAL record per row), which cost 2.4 s of server CPU per 20,000
-- webhooks and a third of intake's acknowledgements per second. A statement trigger
-- removes the text of deleted logs instead (retention, operator deletes), one set-based
-- delete per statement.
--
-- The log's conversation key is kept here too, for the conversation view: indexed on
-- `webhook_logs` it would be written again by every transition (5 entries per event,
-- ~5 % of intake's acknowledgements per second); here once.
CREATE TABLE webhook_log_text (
    log_id           bigint PRIMARY KEY,
    doc              text NOT NULL,
    conversation_key text
);

CREATE FUNCTION webhook_log_text_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM webhook_log_text t USING gone g WHERE t.log_id = g.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_logs_forget_text AFTER DELETE ON webhook_logs
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION webhook_log_text_forget();

INSERT INTO webhook_log_text (log_id, doc, conversation_key)
SELECT id, concat_ws(chr(31), message_text, sender_name, item_id, dedup_key), conversation_key
FROM webhook_logs;

-- Maintained at intake, in the batch's own statement: measured with `hookq send --count
-- 20000 --sample compact` against the API alone, 6,760 acknowledgements/s with it and
-- 7,790 without. With `fastupdate = off` 3,970/s; a 64 MB pending list 7,020/s, but every
-- search scans the pending list, so the default (4 MB) stays.
CREATE INDEX webhook_log_text_trgm ON webhook_log_text USING gin (doc gin_trgm_ops);

-- The conversation view (`GET /api/conversations/{key}`): one conversation's events, and
-- the delivery reports that name one of its replies' provider message ids (only reports
-- get an entry in the second index, and reports are not updated after they are recorded).
CREATE INDEX webhook_log_text_conversation ON webhook_log_text (conversation_key, log_id)
    WHERE conversation_key IS NOT NULL;
CREATE INDEX webhook_logs_report_item ON webhook_logs (item_id)
    WHERE handling = 'delivery_status';
