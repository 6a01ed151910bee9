-- Contract section 11: `webhook_logs` partitioned by month of `received_at`, retention by
-- dropping whole partitions, dedup keys unique for at least HOOKQ_RETENTION_DAYS.
--
-- Why: deleting a month of logs row by row (the retention job until now) writes a WAL
-- record per row and per index entry, leaves the heap and eleven indexes to vacuum, and
-- took 20.7 s at a million rows; dropping the month takes 2.1 s, of which the logs'
-- table is locked 3.8 ms (the rest is forgetting the month's dedup keys), and leaves
-- nothing to vacuum (`cargo run --release --example bench -- retention`, docs/scaling.md).
--
-- The design, and what it costs:
--
-- * `webhook_logs` and `webhook_log_text` (the search text, one row per log) are both
--   partitioned by the UTC month of `received_at`, with the same bounds, so a month's
--   logs and their search text go together. The text table gains `received_at` for that.
--   Each has a DEFAULT partition that catches a row no month partition takes (one
--   inserted with an old `received_at` by hand, or a month the upkeep did not create in
--   time); retention deletes from it row by row. `hookq_log_partitions_ensure(n)` creates
--   the current month and the next n (the retention job calls it every hour with n = 2;
--   this migration with the months the existing rows need).
--
-- * A primary key or unique index of a partitioned table must include the partition key.
--   The primary key becomes (id, received_at): ids still come from one sequence, so `id`
--   alone stays unique in fact, and every lookup by id still uses it.
--
--   The dedup key cannot be unique that way: a webhook repeated the next month would
--   land in another partition. It gets its own table, `webhook_dedup` (dedup_key primary
--   key, plus the log's id and received_at to find the original), written by intake in
--   the same statement as the log, instead of the unique index `webhook_logs` had: the
--   same one btree entry per webhook, plus one narrow heap row. It is the only authority:
--   a key is refused while its row exists. The row goes when its log's partition goes
--   (retention joins the dropped partition's dedup keys, the partition being past
--   HOOKQ_RETENTION_DAYS by then), or when an operator deletes the log (as the unique
--   index entry did). So a key stays unique for the whole retention period and up to a
--   month more. Partitioning this table by time too would bring back the problem it
--   solves (a key unique only within its month); hashing it by key would make retention a
--   row-by-row delete again — which is what it is, on a table of three narrow columns.
--
-- * Foreign keys pointing at `webhook_logs(id)` cannot stay (the referenced key must be
--   the whole primary key), and a partition drop fires no ON DELETE action anyway. The
--   statement trigger that already removed a deleted log's search text now also removes
--   its replies and delivery attempts (the old ON DELETE CASCADE), its dedup key, and
--   clears `connection_statuses.log_id` (the old ON DELETE SET NULL); retention does the
--   same, set-based, for a partition it detaches before dropping it
--   (tasks/src/ops/retention.rs).
--
-- * Nothing unfinished is dropped: a partition is dropped only when every log in it is
--   `processed`, checked under a lock that keeps anyone from changing it (a replay or a
--   retry) between the check and the detach. A partition that holds a dead letter or a
--   log still in flight keeps it: retention deletes its processed rows row by row, as
--   before, and drops the partition once the operator has dealt with the rest.
--
-- The conversion below copies the existing rows (this migration runs in one transaction:
-- nothing is lost if it fails halfway) and builds the indexes after the copy.

ALTER TABLE outbound_replies DROP CONSTRAINT outbound_replies_log_id_fkey;
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_log_id_fkey;
ALTER TABLE connection_statuses DROP CONSTRAINT connection_statuses_log_id_fkey;
DROP TRIGGER webhook_logs_forget_text ON webhook_logs;

ALTER TABLE webhook_logs RENAME TO webhook_logs_unpartitioned;
ALTER SEQUENCE webhook_logs_id_seq RENAME TO webhook_logs_unpartitioned_id_seq;
ALTER TABLE webhook_log_text RENAME TO webhook_log_text_unpartitioned;

-- The same columns, defaults, checks and identity (a new sequence, set below); the primary
-- key takes the partition key; the foreign key to integrations is made again (LIKE copies
-- none).
CREATE TABLE webhook_logs (
    LIKE webhook_logs_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY,
    PRIMARY KEY (id, received_at),
    FOREIGN KEY (integration_id) REFERENCES integrations (id) ON DELETE SET NULL
) PARTITION BY RANGE (received_at);

CREATE TABLE webhook_log_text (
    log_id           bigint NOT NULL,
    received_at      timestamptz NOT NULL,
    doc              text NOT NULL,
    conversation_key text,
    PRIMARY KEY (log_id, received_at)
) PARTITION BY RANGE (received_at);

CREATE TABLE webhook_logs_default PARTITION OF webhook_logs DEFAULT;
CREATE TABLE webhook_log_text_default PARTITION OF webhook_log_text DEFAULT;

CREATE TABLE webhook_dedup (
    dedup_key   text PRIMARY KEY,
    log_id      bigint NOT NULL,
    received_at timestamptz NOT NULL
);

-- The month partitions of both tables for the UTC month starting at `month`, unless the
-- default partition already holds rows of that month (then they stay there: creating the
-- partition would fail, and retention handles the default partition row by row).
CREATE FUNCTION hookq_log_partition_create(month timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    lo timestamptz := date_trunc('month', month, 'UTC');
    hi timestamptz := date_trunc('month', month, 'UTC') + interval '1 month';
    suffix text := to_char(lo AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF to_regclass('webhook_logs_p' || suffix) IS NOT NULL THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM webhook_logs_default WHERE received_at >= lo AND received_at < hi)
       OR EXISTS (SELECT 1 FROM webhook_log_text_default WHERE received_at >= lo AND received_at < hi)
    THEN
        RAISE WARNING 'webhook_logs: rows of % are in the default partition; no partition made', suffix;
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF webhook_logs FOR VALUES FROM (%L) TO (%L)',
                   'webhook_logs_p' || suffix, lo, hi);
    EXECUTE format('CREATE TABLE %I PARTITION OF webhook_log_text FOR VALUES FROM (%L) TO (%L)',
                   'webhook_log_text_p' || suffix, lo, hi);
END
$$;

-- The current UTC month's partitions and the next `ahead` months'.
CREATE FUNCTION hookq_log_partitions_ensure(ahead integer) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 0..ahead LOOP
        PERFORM hookq_log_partition_create(now() + make_interval(months => i));
    END LOOP;
END
$$;

SELECT hookq_log_partition_create(m)
FROM (SELECT DISTINCT date_trunc('month', received_at, 'UTC') AS m
      FROM webhook_logs_unpartitioned) months;
SELECT hookq_log_partitions_ensure(2);

SELECT setval('webhook_logs_id_seq', coalesce(max(id), 0) + 1, false) FROM webhook_logs_unpartitioned;

INSERT INTO webhook_logs OVERRIDING SYSTEM VALUE SELECT * FROM webhook_logs_unpartitioned;

INSERT INTO webhook_log_text (log_id, received_at, doc, conversation_key)
SELECT t.log_id, l.received_at, t.doc, t.conversation_key
FROM webhook_log_text_unpartitioned t JOIN webhook_logs_unpartitioned l ON l.id = t.log_id;

INSERT INTO webhook_dedup (dedup_key, log_id, received_at)
SELECT dedup_key, id, received_at FROM webhook_logs_unpartitioned;

DROP TABLE webhook_log_text_unpartitioned;
DROP TABLE webhook_logs_unpartitioned;

-- The names the constraints had: those made while the old tables still held them got a
-- suffix.
DO $$
DECLARE c record;
BEGIN
    FOR c IN SELECT conrelid::regclass AS t, conname FROM pg_constraint
             WHERE conrelid IN ('webhook_logs'::regclass, 'webhook_log_text'::regclass)
               AND conname ~ '[0-9]$'
    LOOP
        EXECUTE format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I',
                       c.t, c.conname, regexp_replace(c.conname, '[0-9]+$', ''));
    END LOOP;
END
$$;

-- The indexes `webhook_logs` had (0001, 0004, 0009, 0013), on every partition; the
-- unique dedup index is `webhook_dedup`'s primary key now.
CREATE INDEX webhook_logs_received_at ON webhook_logs (received_at DESC, id DESC);
CREATE INDEX webhook_logs_status ON webhook_logs (status, received_at DESC);
CREATE INDEX webhook_logs_event_type ON webhook_logs (event_type, received_at DESC);
CREATE INDEX webhook_logs_integration ON webhook_logs (integration_id, received_at DESC);
CREATE INDEX webhook_logs_status_event_source ON webhook_logs (status, event_type, source);
CREATE INDEX webhook_logs_updated_at ON webhook_logs (updated_at);
CREATE INDEX webhook_logs_source ON webhook_logs (source, received_at DESC);
CREATE INDEX webhook_logs_processed_window ON webhook_logs (processed_at)
    INCLUDE (received_at, attempts) WHERE status = 'processed';
CREATE INDEX webhook_logs_report_item ON webhook_logs (item_id)
    WHERE handling = 'delivery_status';
CREATE INDEX webhook_log_text_trgm ON webhook_log_text USING gin (doc gin_trgm_ops);
CREATE INDEX webhook_log_text_conversation ON webhook_log_text (conversation_key, log_id)
    WHERE conversation_key IS NOT NULL;

-- What deleting a log (an operator's delete, retention in the default partition) takes
-- with it, once per statement: what the foreign keys' ON DELETE actions did, plus the
-- search text and the dedup key.
CREATE OR REPLACE FUNCTION webhook_log_text_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM webhook_log_text t USING gone g
        WHERE t.log_id = g.id AND t.received_at = g.received_at;
    DELETE FROM webhook_dedup d USING gone g WHERE d.dedup_key = g.dedup_key AND d.log_id = g.id;
    DELETE FROM outbound_replies o USING gone g WHERE o.log_id = g.id;
    DELETE FROM delivery_attempts a USING gone g WHERE a.log_id = g.id;
    UPDATE connection_statuses c SET log_id = NULL FROM gone g WHERE c.log_id = g.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_logs_forget_text AFTER DELETE ON webhook_logs
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION webhook_log_text_forget();
