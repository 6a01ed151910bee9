-- The job queue (tasks/src/queue).
--
-- Live jobs (pending or running) sit in `queue_jobs`, which stays small so that claims
-- touch a short index; a job leaves it the moment it finishes, moved in the same
-- statement into `queue_jobs_done` (completed or dead), where `get_job` still finds it.
-- Every timestamp comes from the database clock, so workers on hosts with skewed clocks
-- agree on leases and schedules.

-- The states of a job (see `JobStatus` in tasks/src/queue/record.rs):
--   pending   waiting for `run_at` (first run, or a scheduled retry); claimable
--   running   claimed by one worker (`locked_by`) until `lease_expires_at`, which that
--             worker keeps extending; an expired lease is swept back to pending (or to
--             dead on the last attempt)
--   completed the handler succeeded (archive only)
--   dead      out of attempts, permanent error, undecodable payload or panic (archive
--             only); kept with the last error and every attempt's error
CREATE TYPE queue_job_status AS ENUM ('pending', 'running', 'completed', 'dead');

CREATE TABLE queue_jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_name        text             NOT NULL,
    payload          jsonb            NOT NULL,
    status           queue_job_status NOT NULL DEFAULT 'pending',
    priority         smallint         NOT NULL DEFAULT 0,
    run_at           timestamptz      NOT NULL DEFAULT now(),
    -- claims so far, this one included while running (a hand-back at shutdown undoes
    -- its claim)
    attempts         integer          NOT NULL DEFAULT 0,
    max_attempts     integer          NOT NULL CHECK (max_attempts >= 1),
    -- dedupes against live jobs only: a second enqueue with the key of a pending or
    -- running job returns that job's id
    unique_key       text,
    locked_by        text,
    lease_expires_at timestamptz,
    last_error       text,
    -- [{"attempt": n, "error": "...", "at": timestamptz}, ...]
    errors           jsonb            NOT NULL DEFAULT '[]',
    created_at       timestamptz      NOT NULL DEFAULT now(),
    started_at       timestamptz,
    CHECK (status IN ('pending', 'running')),
    CHECK ((status = 'running') = (locked_by IS NOT NULL AND lease_expires_at IS NOT NULL))
) WITH (
    -- rows churn constantly: vacuum early so dead tuples never slow the claim scan
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02
);

-- The claim scan: ready jobs, highest priority first, then oldest.
CREATE INDEX queue_jobs_ready ON queue_jobs (priority DESC, run_at, id) WHERE status = 'pending';
-- The lease sweep.
CREATE INDEX queue_jobs_leases ON queue_jobs (lease_expires_at) WHERE status = 'running';
CREATE UNIQUE INDEX queue_jobs_unique_key ON queue_jobs (unique_key) WHERE unique_key IS NOT NULL;

CREATE TABLE queue_jobs_done (
    id                  bigint PRIMARY KEY,
    task_name           text             NOT NULL,
    payload             jsonb            NOT NULL,
    status              queue_job_status NOT NULL,
    priority            smallint         NOT NULL,
    run_at              timestamptz      NOT NULL,
    attempts            integer          NOT NULL,
    max_attempts        integer          NOT NULL,
    unique_key          text,
    last_error          text,
    errors              jsonb            NOT NULL,
    -- the handler's return value (null when it returned nothing)
    result              jsonb,
    created_at          timestamptz      NOT NULL,
    started_at          timestamptz,
    finished_at         timestamptz      NOT NULL DEFAULT now(),
    -- a dead job whose dead-letter hook has not run yet (an outbox: hooks run at least
    -- once, even when the worker that killed the job crashed right after)
    dead_letter_pending boolean          NOT NULL DEFAULT false,
    CHECK (status IN ('completed', 'dead'))
);

-- Retention deletes old completed jobs.
CREATE INDEX queue_jobs_done_finished ON queue_jobs_done (finished_at) WHERE status = 'completed';
-- Dead-letter counts for stats.
CREATE INDEX queue_jobs_done_dead ON queue_jobs_done (id) WHERE status = 'dead';
-- The dead-letter hook outbox.
CREATE INDEX queue_jobs_done_hooks ON queue_jobs_done (id) WHERE dead_letter_pending;

-- The last tick each periodic job fired for: claiming a tick is one conditional upsert,
-- so a tick fires once however many processes run the schedule.
CREATE TABLE queue_periodic (
    name      text PRIMARY KEY,
    last_tick timestamptz NOT NULL
);
