-- Contract section 12 (alerts and auto-disable).
--
-- alert_states: one row per operational condition hookq tells HOOKQ_ALERT_URL about
-- (`queue.stalled`, `dead_letters.rising`, `integration.delivery_disabled:<id>`), so an
-- event is sent once when its condition starts and once when it clears, however many
-- processes and hosts evaluate it: a transition is one conditional write (cleared ->
-- active, active -> cleared) and its event is a queue job enqueued in the same
-- transaction (core/src/alerts.rs owns the transitions).
CREATE TABLE alert_states (
    key        text PRIMARY KEY,
    kind       text NOT NULL,
    active     boolean NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}',
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_states_active ON alert_states (kind) WHERE active;

-- delivery_health: since when an integration's endpoint has failed every attempt (a row
-- exists only while it fails; its first failure inserts it, any success deletes it).
-- Kept apart from `integrations` on purpose: every statement that writes integrations
-- bumps the directory version (0006), which makes every worker drop its cache, and a
-- success path that wrote there would do so on every delivery.
CREATE TABLE delivery_health (
    integration_id uuid PRIMARY KEY REFERENCES integrations (id) ON DELETE CASCADE,
    failing_since  timestamptz NOT NULL DEFAULT now()
);

-- Why delivery was switched off, when hookq did it: `gone` (the endpoint answered 410)
-- or `failing` (every attempt failed for HOOKQ_DISABLE_DELIVERY_AFTER). NULL when on,
-- or when an operator switched it off by hand (which raises no alert).
ALTER TABLE integrations ADD COLUMN delivery_disabled_reason text
    CHECK (delivery_disabled_reason IN ('gone', 'failing'));
