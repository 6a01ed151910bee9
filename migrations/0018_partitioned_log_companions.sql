-- Contract section 11: a month of logs goes in one drop, with everything that belongs to
-- its logs. 0017 partitioned `webhook_logs` and its search text by month; this partitions
-- the three tables that still held a row per log — the dedup keys (`webhook_dedup`), the
-- replies (`outbound_replies`) and their tries (`delivery_attempts`) — on the same months,
-- so retention drops their partitions with the logs' instead of deleting a row per log.
--
-- Why: after 0017, dropping a month of a million logs still deleted a million dedup keys
-- one by one (1.6 s of the 2.1 s), and with a reply and an attempt per processed log it
-- would have deleted two million rows more (`bench retention` fills all three now).
--
-- * `outbound_replies` and `delivery_attempts` gain `log_received_at`, their log's
--   `received_at`, and are partitioned by RANGE on it with the logs' bounds: a reply and
--   its tries are in the month of their log, and go with it. Their writers read it from
--   the row they hang off (core::delivery::store). Unique keys take the partition key:
--   (id, log_received_at), (log_id, log_received_at) — a log has one `received_at`, so
--   this is still one reply per log —, (webhook_id, log_received_at) (a random id: unique
--   in fact), (reply_id, attempt, log_received_at). The attempts' foreign key to their
--   reply goes: detaching a referenced partition makes PostgreSQL scan the referencing
--   table for rows pointing into it (a second per million), and the two only ever go
--   together (with their log: the delete trigger, or the month's drop).
--
-- * `webhook_dedup` is partitioned by RANGE on `month`, the UTC month its row was written
--   in (the month of its log's `received_at`), with primary key (dedup_key, month). A
--   key must stay unique across months, which no index of a partitioned table can say;
--   intake (tasks/src/intake/writer.rs) says it in two parts:
--   - A key already in an earlier month is a duplicate of that log: one index probe per
--     partition older than the months written to (`prior`).
--   - Concurrent writers of one key must meet on one unique index: each statement writes
--     its key into every month of `hookq_dedup_months(now(), clock_timestamp())` — its
--     own, and the previous one during the first hour of a month or when the statement
--     began in it — and a conflict in any of them makes it a duplicate. Two writers of a
--     key that run at the same time share at least one month, unless one statement's
--     transaction lasted over an hour (an intake statement is one implicit transaction
--     of a few milliseconds). The extra rows a month boundary writes are dropped with
--     their month, and deleted with their log like the others (same key and log id).
--   Retention then drops a month's dedup partition with its logs: the keys of a month
--   are remembered until the month is past HOOKQ_RETENTION_DAYS, as before.
--
-- * `hookq_log_partition_create` now makes the month's partition of all five tables, and
--   the delete trigger's statements are pruned to the deleted logs' months.
--
-- The conversion copies the rows (replies and attempts take their log's `received_at`;
-- one whose log is gone keeps its own `created_at`/`started_at`), in this migration's one
-- transaction.

ALTER TABLE outbound_replies RENAME TO outbound_replies_unpartitioned;
ALTER SEQUENCE outbound_replies_id_seq RENAME TO outbound_replies_unpartitioned_id_seq;
ALTER TABLE delivery_attempts RENAME TO delivery_attempts_unpartitioned;
ALTER SEQUENCE delivery_attempts_id_seq RENAME TO delivery_attempts_unpartitioned_id_seq;
ALTER TABLE webhook_dedup RENAME TO webhook_dedup_unpartitioned;

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

CREATE TABLE webhook_dedup (
    dedup_key   text NOT NULL,
    month       timestamptz NOT NULL,
    log_id      bigint NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (dedup_key, month)
) PARTITION BY RANGE (month);

CREATE TABLE outbound_replies_default PARTITION OF outbound_replies DEFAULT;
CREATE TABLE delivery_attempts_default PARTITION OF delivery_attempts DEFAULT;
CREATE TABLE webhook_dedup_default PARTITION OF webhook_dedup DEFAULT;

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
CREATE OR REPLACE FUNCTION hookq_log_partition_create(month timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    lo timestamptz := date_trunc('month', month, 'UTC');
    hi timestamptz := date_trunc('month', month, 'UTC') + interval '1 month';
    suffix text := to_char(lo AT TIME ZONE 'UTC', 'YYYY_MM');
    t record;
BEGIN
    IF to_regclass('webhook_logs_p' || suffix) IS NOT NULL
       AND to_regclass('webhook_log_text_p' || suffix) IS NOT NULL
       AND to_regclass('webhook_dedup_p' || suffix) IS NOT NULL
       AND to_regclass('outbound_replies_p' || suffix) IS NOT NULL
       AND to_regclass('delivery_attempts_p' || suffix) IS NOT NULL
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
    FOR t IN SELECT * FROM (VALUES ('webhook_logs'), ('webhook_log_text'), ('webhook_dedup'),
                                   ('outbound_replies'), ('delivery_attempts')) AS v(parent)
    LOOP
        IF to_regclass(t.parent || '_p' || suffix) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           t.parent || '_p' || suffix, t.parent, lo, hi);
        END IF;
    END LOOP;
END
$$;

-- Every month the existing rows name, and the coming ones.
SELECT hookq_log_partition_create(m)
FROM (SELECT date_trunc('month', received_at, 'UTC') AS m FROM webhook_logs
      UNION SELECT date_trunc('month', received_at, 'UTC') FROM webhook_dedup_unpartitioned
      UNION SELECT date_trunc('month', created_at, 'UTC') FROM outbound_replies_unpartitioned
      UNION SELECT date_trunc('month', started_at, 'UTC') FROM delivery_attempts_unpartitioned
     ) months;
SELECT hookq_log_partitions_ensure(2);

SELECT setval('outbound_replies_id_seq', coalesce(max(id), 0) + 1, false)
FROM outbound_replies_unpartitioned;
SELECT setval('delivery_attempts_id_seq', coalesce(max(id), 0) + 1, false)
FROM delivery_attempts_unpartitioned;

INSERT INTO webhook_dedup (dedup_key, month, log_id, received_at)
SELECT dedup_key, date_trunc('month', received_at, 'UTC'), log_id, received_at
FROM webhook_dedup_unpartitioned;

INSERT INTO outbound_replies OVERRIDING SYSTEM VALUE
SELECT r.*, coalesce(l.received_at, r.created_at)
FROM outbound_replies_unpartitioned r LEFT JOIN webhook_logs l ON l.id = r.log_id;

INSERT INTO delivery_attempts OVERRIDING SYSTEM VALUE
SELECT a.*, coalesce(r.log_received_at, a.started_at)
FROM delivery_attempts_unpartitioned a LEFT JOIN outbound_replies r ON r.id = a.reply_id;

DROP TABLE delivery_attempts_unpartitioned;
DROP TABLE outbound_replies_unpartitioned;
DROP TABLE webhook_dedup_unpartitioned;

-- The names the constraints had: those made while the old tables still held them got a
-- suffix.
DO $$
DECLARE c record;
BEGIN
    FOR c IN SELECT conrelid::regclass AS t, conname FROM pg_constraint
             WHERE conrelid IN ('outbound_replies'::regclass, 'delivery_attempts'::regclass,
                                'webhook_dedup'::regclass)
               AND conname ~ '[0-9]$'
    LOOP
        EXECUTE format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I',
                       c.t, c.conname, regexp_replace(c.conname, '[0-9]+$', ''));
    END LOOP;
END
$$;

-- The indexes the two tables had (0003, 0007), on every partition.
CREATE INDEX outbound_replies_provider_message_id ON outbound_replies (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX outbound_replies_integration ON outbound_replies (integration_id);
CREATE INDEX delivery_attempts_log ON delivery_attempts (log_id, attempt);
CREATE INDEX delivery_attempts_limit ON delivery_attempts (limit_key, started_at);
CREATE INDEX delivery_attempts_started ON delivery_attempts (started_at);

-- What deleting a log takes with it (0017), each statement pruned to the deleted logs'
-- months; a dedup key's rows in every month it was written into.
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
