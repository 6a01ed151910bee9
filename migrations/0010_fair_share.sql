-- Many accounts on one hookq (contract section 10): fair claiming across groups, budgets
-- per group, order within a conversation.
--
-- The queue (tasks/src/queue) knows two optional keys per job:
--   group_key  the fair-share group: the claim takes ready work round-robin across groups,
--              and a group's budget (queue_groups) holds its jobs back; '' is "no group"
--   order_key  a conversation: a job is claimable only while no earlier (lower id) live
--              job of the same key exists, so a conversation runs in the order received,
--              retries included (a retried job keeps its row and its place)
-- The domain fills them: a `process_webhook` job's group is its log's account
-- (`hookq_log_group` below), its order key the log's conversation; integrations keep
-- their group's budget row up to date through a trigger.

ALTER TABLE queue_jobs ADD COLUMN group_key text NOT NULL DEFAULT '';
ALTER TABLE queue_jobs ADD COLUMN order_key text;
ALTER TABLE queue_jobs_done ADD COLUMN group_key text NOT NULL DEFAULT '';

-- The claim walks the groups that have pending work (a loose index scan over this index)
-- and takes each group's next jobs from it; it replaces the single FIFO index.
DROP INDEX queue_jobs_ready;
CREATE INDEX queue_jobs_ready ON queue_jobs (group_key, priority DESC, run_at, id) WHERE status = 'pending';
-- Jobs running per group (max_running, and the rate window's running part).
CREATE INDEX queue_jobs_running_group ON queue_jobs (group_key) WHERE status = 'running' AND group_key <> '';
-- The earlier live job of a conversation.
CREATE INDEX queue_jobs_order ON queue_jobs (order_key, id) WHERE order_key IS NOT NULL;
-- Runs of a group finished within its rate window.
CREATE INDEX queue_jobs_done_group ON queue_jobs_done (group_key, finished_at) WHERE group_key <> '';

-- A group's budget. No row: no budget but the workers' default rate limit.
--   paused          nothing of the group is claimed
--   max_running     at most this many of its jobs running at once, across all workers
--   rate_limit      at most this many runs per rate_window_ms, rolling: a claim counts the
--                   group's running jobs plus those finished within the window, so no window
--                   ever holds more than rate_limit finished runs
CREATE TABLE queue_groups (
    key            text PRIMARY KEY,
    paused         boolean NOT NULL DEFAULT false,
    max_running    integer CHECK (max_running >= 1),
    rate_limit     integer CHECK (rate_limit >= 1),
    rate_window_ms bigint  CHECK (rate_window_ms >= 1),
    CHECK ((rate_limit IS NULL) = (rate_window_ms IS NULL))
);

-- ---------------------------------------------------------------- the domain's side

ALTER TABLE integrations ADD COLUMN paused boolean NOT NULL DEFAULT false;
-- `N/s`, `N/min` or `N/h`.
ALTER TABLE integrations ADD COLUMN reply_rate_limit text
    CHECK (reply_rate_limit ~ '^[1-9][0-9]{0,8}/(s|min|h)$');
ALTER TABLE integrations ADD COLUMN max_concurrent integer CHECK (max_concurrent >= 1);

-- The conversation a log belongs to (its jobs' order key).
ALTER TABLE webhook_logs ADD COLUMN conversation_key text;

ALTER TABLE webhook_logs DROP CONSTRAINT webhook_logs_skip_reason_check;
ALTER TABLE webhook_logs ADD CONSTRAINT webhook_logs_skip_reason_check CHECK (skip_reason IN
    ('own_message', 'empty', 'blocklisted', 'spam', 'replies_disabled', 'too_long', 'window_closed'));

-- An integration's queue group: its platform and account, as events name them.
CREATE FUNCTION hookq_integration_key(platform text, account_id text) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$ SELECT platform || ':' || account_id $$;

-- The group of a log's jobs: the integration its account names (Meta, WhatsApp), else for
-- the compact shape (which names a user) the integration of the user's post, else the
-- user's only integration on the platform, else the user; '' for an event that names
-- neither. Mirrors the comment use case's resolution (contract section 4).
CREATE FUNCTION hookq_log_group(p_source text, p_account_id text, p_user text, p_post text) RETURNS text
    LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN p_account_id IS NOT NULL THEN hookq_integration_key(p_source, p_account_id)
        WHEN p_user IS NULL THEN ''
        ELSE coalesce(
            (SELECT hookq_integration_key(i.platform, i.account_id)
             FROM users u
             JOIN integrations i ON i.user_id = u.id AND i.platform = p_source
             JOIN posts p ON p.integration_id = i.id AND p.external_id = p_post
             WHERE u.external_id = p_user
             LIMIT 1),
            (SELECT min(hookq_integration_key(i.platform, i.account_id))
             FROM users u
             JOIN integrations i ON i.user_id = u.id AND i.platform = p_source
             WHERE u.external_id = p_user
             HAVING count(*) = 1),
            'user:' || p_user)
    END
$$;

-- Keeps each integration's group budget in step with its fields, and wakes the workers
-- (a resumed or relaxed group has work to hand out at once).
CREATE FUNCTION hookq_integration_group() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND
        hookq_integration_key(OLD.platform, OLD.account_id)
            <> hookq_integration_key(NEW.platform, NEW.account_id)) THEN
        DELETE FROM queue_groups WHERE key = hookq_integration_key(OLD.platform, OLD.account_id);
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN NULL;
    END IF;
    INSERT INTO queue_groups (key, paused, max_running, rate_limit, rate_window_ms)
    VALUES (hookq_integration_key(NEW.platform, NEW.account_id), NEW.paused, NEW.max_concurrent,
            split_part(NEW.reply_rate_limit, '/', 1)::int,
            CASE split_part(NEW.reply_rate_limit, '/', 2)
                WHEN 's' THEN 1000 WHEN 'min' THEN 60000 WHEN 'h' THEN 3600000 END)
    ON CONFLICT (key) DO UPDATE SET paused = EXCLUDED.paused,
        max_running = EXCLUDED.max_running, rate_limit = EXCLUDED.rate_limit,
        rate_window_ms = EXCLUDED.rate_window_ms;
    PERFORM pg_notify('hookq_queue', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER integrations_queue_group
    AFTER INSERT OR UPDATE OF platform, account_id, paused, reply_rate_limit, max_concurrent
        OR DELETE ON integrations
    FOR EACH ROW EXECUTE FUNCTION hookq_integration_group();

INSERT INTO queue_groups (key)
SELECT hookq_integration_key(platform, account_id) FROM integrations
ON CONFLICT DO NOTHING;
