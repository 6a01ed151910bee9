-- Contract section 11: `webhook_logs` partitioned by month of `received_at`, retention by
-- dropping whole months, dedup keys unique for at least HOOKQ_RETENTION_DAYS.
--
-- Why: deleting a month of logs row by row (the retention job until now) writes a WAL
-- record per row and per index entry, and leaves the heap and every index to vacuum. A
-- month of a million logs goes in one drop only if everything that holds a row per log
-- goes with it: its search text, its dedup key, its reply and the reply's delivery
-- attempts. With only the logs and their text partitioned, dropping such a month still
-- deleted three million rows and took 10.5 s; with all five it takes 0.69–0.98 s, the
-- parents locked 5–9 ms (`cargo run --release --example bench -- retention`; row by row,
-- 17–19 s; docs/scaling.md).
--
-- The design, and what it costs:
--
-- * `webhook_logs` and the four tables with a row per log are partitioned on the same UTC
--   months, with the same bounds. Each has a DEFAULT partition that catches a row no
--   month partition takes (one inserted with an old date by hand, or a month the upkeep
--   did not create in time); retention deletes from it row by row.
--   `hookq_log_partitions_ensure(n)` creates the current month and the next n in all
--   five (the retention job calls it every hour with n = 2; this migration also with the
--   months the existing rows need).
--
-- * A primary key or unique index of a partitioned table must include the partition key.
--   `webhook_logs`' primary key becomes (id, received_at): ids still come from one
--   sequence, so `id` alone stays unique in fact, and every lookup by id still uses it.
--   `webhook_log_text` gains `received_at` for its partition key.
--
-- * `outbound_replies` and `delivery_attempts` gain `log_received_at`, their log's
--   `received_at`; their writers read it in the same statement (core::delivery::store).
--   Their unique keys take it: (log_id, log_received_at) is still one reply per log, as a
--   log has one `received_at`; (webhook_id, log_received_at), a random id, unique in fact;
--   (reply_id, attempt, log_received_at). The attempts' foreign key to their reply goes:
--   detaching a referenced partition makes PostgreSQL scan the referencing table for
--   rows pointing into it, and the two only ever go together, with their log.
--
-- * The dedup key cannot stay a unique index on `webhook_logs`: a webhook repeated the
--   next month would land in another partition. It gets its own table, `webhook_dedup`,
--   written by intake in the same statement as the log, partitioned by `month` (the UTC
--   month its row was written in: its log's month), primary key (dedup_key, month). That
--   a key is unique across months no index can say; intake (tasks/src/intake/writer.rs)
--   says it in two parts:
--   - A key already in an earlier month is a duplicate of that log: one index probe per
--     older partition (run-time pruning skips the months ahead).
--   - Concurrent writers of one key must meet on one unique index: each statement writes
--     its key into every month of `hookq_dedup_months(now(), clock_timestamp())` — its
--     own, and the previous one during a month's first hour or when the statement began
--     in it — and a conflict in any of them makes it a duplicate. Two writers of a key
--     that run at the same time share at least one month, unless one statement's
--     transaction lasted over an hour (an intake statement is one implicit transaction of
--     a few milliseconds). The extra rows a month start writes go with their month, and
--     with their log when it is deleted (same key and log id).
--   A month's keys are dropped with its logs, so a key is remembered for the whole
--   retention period and up to a month more.
--
-- * Foreign keys pointing at `webhook_logs(id)` cannot stay (the referenced key must be
--   the whole primary key), and a partition drop fires no ON DELETE action anyway. The
--   statement trigger that already removed a deleted log's search text now also removes
--   its dedup key, reply and delivery attempts (the old ON DELETE CASCADE) and clears
--   `connection_statuses.log_id` (the old ON DELETE SET NULL); retention clears those
--   links for a month it drops (core::logs::partitions).
--
-- * Nothing unfinished is dropped: a month is dropped only when every log in it is
--   `processed`, checked under the lock its detach takes, which keeps anyone from
--   changing one (a replay, a retry, a resend) between the check and the detach. A month
--   holding a dead letter or a log still in flight is kept: retention deletes its
--   processed rows row by row, as before, and drops the month once the operator has dealt
--   with the rest.
--
-- The conversion below copies the existing rows (this migration runs in one transaction:
-- nothing is lost if it fails halfway) and builds the indexes after the copy. A reply or
-- attempt whose log is gone keeps its own `created_at`/`started_at` as its month.

ALTER TABLE outbound_replies DROP CONSTRAINT outbound_replies_log_id_fkey;
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_log_id_fkey;
ALTER TABLE connection_statuses DROP CONSTRAINT connection_statuses_log_id_fkey;
DROP TRIGGER webhook_logs_forget_text ON webhook_logs;

ALTER TABLE webhook_logs RENAME TO webhook_logs_unpartitioned;
ALTER SEQUENCE webhook_logs_id_seq RENAME TO webhook_logs_unpartitioned_id_seq;
ALTER TABLE webhook_log_text RENAME TO webhook_log_text_unpartitioned;
ALTER TABLE outbound_replies RENAME TO outbound_replies_unpartitioned;
ALTER SEQUENCE outbound_replies_id_seq RENAME TO outbound_replies_unpartitioned_id_seq;
ALTER TABLE delivery_attempts RENAME TO delivery_attempts_unpartitioned;
ALTER SEQUENCE delivery_attempts_id_seq RENAME TO delivery_attempts_unpartitioned_id_seq;

-- The same columns, defaults, checks and identity (new sequences, set below); the primary
-- and unique keys take the partition key; foreign keys to integrations are made again
-- (LIKE copies none).
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

CREATE TABLE webhook_dedup (
    dedup_key   text NOT NULL,
    month       timestamptz NOT NULL,
    log_id      bigint NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (dedup_key, month)
) PARTITION BY RANGE (month);

CREATE TABLE outbound_replies (
    LIKE outbound_replies_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY,
    log_received_at timestamptz NOT NULL,
    PRIMARY KEY (id, log_received_at),
    UNIQUE (log_id, log_received_at),
    UNIQUE (webhook_id, log_received_at),
    FOREIGN KEY (integration_id) REFERENCES integrations (id) ON DELETE SET NULL
) PARTITION BY RANGE (log_received_at);

CREATE TABLE delivery_attempts (
    LIKE delivery_attempts_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY,
    log_received_at timestamptz NOT NULL,
    PRIMARY KEY (id, log_received_at),
    UNIQUE (reply_id, attempt, log_received_at)
) PARTITION BY RANGE (log_received_at);

CREATE TABLE webhook_logs_default PARTITION OF webhook_logs DEFAULT;
CREATE TABLE webhook_log_text_default PARTITION OF webhook_log_text DEFAULT;
CREATE TABLE webhook_dedup_default PARTITION OF webhook_dedup DEFAULT;
CREATE TABLE outbound_replies_default PARTITION OF outbound_replies DEFAULT;
CREATE TABLE delivery_attempts_default PARTITION OF delivery_attempts DEFAULT;

-- The months a dedup key is written into by a statement that began at `began` and runs
-- at `clock` (see above): `began`'s, the one an hour before it, and `clock`'s.
CREATE FUNCTION hookq_dedup_months(began timestamptz, clock timestamptz)
RETURNS SETOF timestamptz LANGUAGE sql STABLE AS $$
    SELECT DISTINCT date_trunc('month', t, 'UTC')
    FROM unnest(ARRAY[began, began - interval '1 hour', clock]) AS t
$$;

-- The month partitions of all five tables for the UTC month starting at `month`, where
-- missing, unless a default partition already holds rows of that month (then they stay
-- there, for all five: retention handles the default partitions row by row).
CREATE FUNCTION hookq_log_partition_create(month timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    lo timestamptz := date_trunc('month', month, 'UTC');
    hi timestamptz := date_trunc('month', month, 'UTC') + interval '1 month';
    suffix text := to_char(lo AT TIME ZONE 'UTC', 'YYYY_MM');
    parents text[] := ARRAY['webhook_logs', 'webhook_log_text', 'webhook_dedup',
                            'outbound_replies', 'delivery_attempts'];
    parent text;
BEGIN
    IF (SELECT bool_and(to_regclass(p || '_p' || suffix) IS NOT NULL) FROM unnest(parents) p)
    THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM webhook_logs_default WHERE received_at >= lo AND received_at < hi)
       OR EXISTS (SELECT 1 FROM webhook_log_text_default WHERE received_at >= lo AND received_at < hi)
       OR EXISTS (SELECT 1 FROM webhook_dedup_default d WHERE d.month >= lo AND d.month < hi)
       OR EXISTS (SELECT 1 FROM outbound_replies_default
                  WHERE log_received_at >= lo AND log_received_at < hi)
       OR EXISTS (SELECT 1 FROM delivery_attempts_default
                  WHERE log_received_at >= lo AND log_received_at < hi)
    THEN
        RAISE WARNING 'webhook_logs: rows of % are in a default partition; no partition made', suffix;
        RETURN;
    END IF;
    FOREACH parent IN ARRAY parents LOOP
        IF to_regclass(parent || '_p' || suffix) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           parent || '_p' || suffix, parent, lo, hi);
        END IF;
    END LOOP;
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

-- Every month the existing rows name, and the coming ones.
SELECT hookq_log_partition_create(m)
FROM (SELECT date_trunc('month', received_at, 'UTC') AS m FROM webhook_logs_unpartitioned
      UNION SELECT date_trunc('month', created_at, 'UTC') FROM outbound_replies_unpartitioned
      UNION SELECT date_trunc('month', started_at, 'UTC') FROM delivery_attempts_unpartitioned
     ) months;
SELECT hookq_log_partitions_ensure(2);

SELECT setval('webhook_logs_id_seq', coalesce(max(id), 0) + 1, false) FROM webhook_logs_unpartitioned;
SELECT setval('outbound_replies_id_seq', coalesce(max(id), 0) + 1, false)
FROM outbound_replies_unpartitioned;
SELECT setval('delivery_attempts_id_seq', coalesce(max(id), 0) + 1, false)
FROM delivery_attempts_unpartitioned;

INSERT INTO webhook_logs OVERRIDING SYSTEM VALUE SELECT * FROM webhook_logs_unpartitioned;

INSERT INTO webhook_log_text (log_id, received_at, doc, conversation_key)
SELECT t.log_id, l.received_at, t.doc, t.conversation_key
FROM webhook_log_text_unpartitioned t JOIN webhook_logs_unpartitioned l ON l.id = t.log_id;

INSERT INTO webhook_dedup (dedup_key, month, log_id, received_at)
SELECT dedup_key, date_trunc('month', received_at, 'UTC'), id, received_at
FROM webhook_logs_unpartitioned;

INSERT INTO outbound_replies OVERRIDING SYSTEM VALUE
SELECT r.*, coalesce(l.received_at, r.created_at)
FROM outbound_replies_unpartitioned r LEFT JOIN webhook_logs_unpartitioned l ON l.id = r.log_id;

INSERT INTO delivery_attempts OVERRIDING SYSTEM VALUE
SELECT a.*, coalesce(r.log_received_at, a.started_at)
FROM delivery_attempts_unpartitioned a LEFT JOIN outbound_replies r ON r.id = a.reply_id;

DROP TABLE delivery_attempts_unpartitioned;
DROP TABLE outbound_replies_unpartitioned;
DROP TABLE webhook_log_text_unpartitioned;
DROP TABLE webhook_logs_unpartitioned;

-- The names the constraints had: those made while the old tables still held them got a
-- suffix.
DO $$
DECLARE c record;
BEGIN
    FOR c IN SELECT conrelid::regclass AS t, conname FROM pg_constraint
             WHERE conrelid IN ('webhook_logs'::regclass, 'webhook_log_text'::regclass,
                                'outbound_replies'::regclass, 'delivery_attempts'::regclass)
               AND conname ~ '[0-9]$'
    LOOP
        EXECUTE format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I',
                       c.t, c.conname, regexp_replace(c.conname, '[0-9]+$', ''));
    END LOOP;
END
$$;

-- The indexes the four tables had (0001, 0003, 0004, 0007, 0009, 0013), on every
-- partition; `webhook_logs`' unique dedup index is `webhook_dedup`'s primary key now.
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

CREATE INDEX outbound_replies_provider_message_id ON outbound_replies (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX outbound_replies_integration ON outbound_replies (integration_id);
CREATE INDEX delivery_attempts_log ON delivery_attempts (log_id, attempt);
CREATE INDEX delivery_attempts_limit ON delivery_attempts (limit_key, started_at);
CREATE INDEX delivery_attempts_started ON delivery_attempts (started_at);

-- What deleting a log (an operator's delete, retention in the default partition) takes
-- with it, once per statement, each statement pruned to the deleted logs' months: what
-- the foreign keys' ON DELETE actions did, plus the search text and the dedup key (its
-- rows in every month it was written into).
CREATE OR REPLACE FUNCTION webhook_log_text_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM webhook_log_text t USING gone g
        WHERE t.log_id = g.id AND t.received_at = g.received_at;
    DELETE FROM webhook_dedup d USING gone g WHERE d.dedup_key = g.dedup_key AND d.log_id = g.id;
    DELETE FROM outbound_replies o USING gone g
        WHERE o.log_id = g.id AND o.log_received_at = g.received_at;
    DELETE FROM delivery_attempts a USING gone g
        WHERE a.log_id = g.id AND a.log_received_at = g.received_at;
    UPDATE connection_statuses c SET log_id = NULL FROM gone g WHERE c.log_id = g.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_logs_forget_text AFTER DELETE ON webhook_logs
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION webhook_log_text_forget();
