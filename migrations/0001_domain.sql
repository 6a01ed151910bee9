-- hookq's domain: the admin resources (contract section 7) and webhook_logs (section 4).
-- Admin resources use UUIDs (referenced by clients); logs use bigint ids (high volume).

CREATE TABLE users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    external_id text NOT NULL UNIQUE,
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE persona_templates (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name           text NOT NULL,
    reply_template text NOT NULL,
    system_prompt  text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE personas (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    external_id text NOT NULL UNIQUE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    template_id uuid NOT NULL REFERENCES persona_templates (id) ON DELETE RESTRICT,
    name        text NOT NULL,
    blocklist   text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX personas_user_id ON personas (user_id);
CREATE INDEX personas_template_id ON personas (template_id);

CREATE TABLE integrations (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    platform           text NOT NULL CHECK (platform IN ('instagram', 'facebook', 'whatsapp')),
    account_id         text NOT NULL,
    access_token       text,
    reply_delivery     text NOT NULL DEFAULT 'none' CHECK (reply_delivery IN ('none', 'callback', 'graph_api')),
    callback_url       text,
    callback_secret    text,
    default_persona_id uuid REFERENCES personas (id) ON DELETE SET NULL,
    -- Turned off when a delivery endpoint answers 410 Gone, until an operator re-enables it.
    delivery_enabled   boolean NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (platform, account_id)
);
CREATE INDEX integrations_user_id ON integrations (user_id);

CREATE TABLE posts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    external_id     text NOT NULL,
    integration_id  uuid NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    persona_id      uuid REFERENCES personas (id) ON DELETE SET NULL,
    caption         text NOT NULL DEFAULT '',
    replies_enabled boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);
CREATE INDEX posts_external_id ON posts (external_id);

-- One row per inbound event. `dedup_key` makes ingest idempotent; `status` is the
-- pipeline's state machine (see core::logs::LogStatus for every state).
CREATE TABLE webhook_logs (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedup_key           text NOT NULL UNIQUE,
    source              text NOT NULL,
    event_type          text NOT NULL,
    handling            text NOT NULL CHECK (handling IN ('reply', 'record', 'delivery_status')),
    -- Routing facts parsed at ingest, so a worker never re-parses the payload.
    account_id          text,
    user_external_id    text,
    persona_external_id text,
    post_external_id    text,
    item_id             text,
    sender_id           text,
    sender_name         text,
    message_text        text,
    is_own              boolean NOT NULL DEFAULT false,
    occurred_at         timestamptz,
    payload             jsonb NOT NULL,
    integration_id      uuid REFERENCES integrations (id) ON DELETE SET NULL,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'processing', 'processed', 'failed', 'dead_letter')),
    attempts            integer NOT NULL DEFAULT 0,
    error_message       text,
    outcome             text CHECK (outcome IN ('replied', 'skipped', 'recorded')),
    skip_reason         text CHECK (skip_reason IN ('own_message', 'empty', 'blocklisted', 'spam', 'replies_disabled', 'too_long')),
    reply_text          text,
    persona_id          uuid,
    received_at         timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    processed_at        timestamptz,
    next_retry_at       timestamptz,
    job_id              bigint,
    duplicate_count     integer NOT NULL DEFAULT 0,
    correlation_id      text,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_logs_received_at ON webhook_logs (received_at DESC, id DESC);
CREATE INDEX webhook_logs_status ON webhook_logs (status, received_at DESC);
CREATE INDEX webhook_logs_event_type ON webhook_logs (event_type, received_at DESC);
CREATE INDEX webhook_logs_integration ON webhook_logs (integration_id, received_at DESC);
CREATE INDEX webhook_logs_job_id ON webhook_logs (job_id);
CREATE INDEX webhook_logs_processed_at ON webhook_logs (processed_at) WHERE status = 'processed';
