-- Reply delivery (contract sections 4 and 9) and connection status.
--
-- A reply that must leave hookq (`reply_delivery` = `callback` or `graph_api`) gets one
-- `outbound_replies` row, created in the same transaction that stores the reply text on
-- its log and enqueues the delivery job, so no reply is lost between generation and
-- delivery. Every try is a `delivery_attempts` row committed BEFORE the request leaves:
-- a row still `in_flight` after its worker died is a send with an unknown outcome, never
-- retried by itself (at most once per log).

-- The states of an outbound reply (core::delivery::ReplyState):
--   pending    staged (or staged again by an operator resend); its delivery job is queued
--   sending    an attempt is committed and its request may have left
--   retrying   the last attempt failed transiently; the next job runs at next_attempt_at
--   delivered  the endpoint answered 2xx
--   failed     a permanent failure, or out of tries (last_error says which)
--   unknown    an attempt was cut off by a crash: it may or may not have arrived
CREATE TABLE outbound_replies (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    log_id              bigint NOT NULL UNIQUE REFERENCES webhook_logs (id) ON DELETE CASCADE,
    integration_id      uuid REFERENCES integrations (id) ON DELETE SET NULL,
    kind                text NOT NULL CHECK (kind IN ('callback', 'graph_api')),
    -- Standard Webhooks `webhook-id`: fixed when the reply is first staged and reused by
    -- every attempt and every operator resend, so receivers can dedupe.
    webhook_id          text NOT NULL UNIQUE,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'sending', 'retrying', 'delivered', 'failed', 'unknown')),
    -- attempts made over the reply's life; `round_base` is the count when the current
    -- round (first staging or the latest resend) began: its tries are attempts - round_base
    attempts            integer NOT NULL DEFAULT 0,
    round_base          integer NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz,
    last_error          text,
    -- What the platform said about the message afterwards (Bridge message.sent/failed,
    -- Cloud API statuses), matched by the id its API answered with.
    provider_message_id text,
    provider_status     text,
    provider_error      text,
    provider_status_at  timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    delivered_at        timestamptz
);
CREATE INDEX outbound_replies_provider_message_id ON outbound_replies (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX outbound_replies_integration ON outbound_replies (integration_id);

-- One row per try. `limit_key` is what rate limits count by (the callback host, or the
-- integration for graph_api); `url` is shown to operators without query or credentials.
CREATE TABLE delivery_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reply_id    bigint NOT NULL REFERENCES outbound_replies (id) ON DELETE CASCADE,
    log_id      bigint NOT NULL REFERENCES webhook_logs (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    kind        text NOT NULL,
    url         text NOT NULL,
    limit_key   text NOT NULL,
    -- the queue job that made this attempt: a re-run of that job finding its own attempt
    -- still in flight knows its previous run died mid-request
    job_id      bigint,
    state       text NOT NULL DEFAULT 'in_flight'
                CHECK (state IN ('in_flight', 'succeeded', 'failed', 'unknown')),
    status_code integer,
    duration_ms integer,
    error       text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    UNIQUE (reply_id, attempt)
);
CREATE INDEX delivery_attempts_log ON delivery_attempts (log_id, attempt);
-- The rolling-window limits: attempts per key over the last minute, and in flight.
CREATE INDEX delivery_attempts_limit ON delivery_attempts (limit_key, started_at);

-- The latest Bridge `connection.status` per connection (the account's phone number when
-- the event names it, else its session id). Older reports never overwrite newer ones.
CREATE TABLE connection_statuses (
    connection_key text PRIMARY KEY,
    session_id     text,
    phone_number   text,
    integration_id uuid REFERENCES integrations (id) ON DELETE SET NULL,
    status         text NOT NULL,
    reported_at    timestamptz,
    log_id         bigint REFERENCES webhook_logs (id) ON DELETE SET NULL,
    data           jsonb NOT NULL DEFAULT '{}',
    updated_at     timestamptz NOT NULL DEFAULT now()
);
