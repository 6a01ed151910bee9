-- Contract section 12 (roles and audit): every change an operator makes through the
-- admin API (each POST, PATCH, PUT or DELETE under /api/ that carried a valid token,
-- whatever its answer) is one row here: when, which role, what, on which resource, and
-- the status it got. Request bodies are not kept (they may hold secrets such as a
-- callback secret or an access token); the path names the resource.
CREATE TABLE audit_log (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    role          text NOT NULL CHECK (role IN ('admin', 'readonly')),
    -- create, update, delete, retry, pause, resume, ... (see core/src/audit.rs)
    action        text NOT NULL,
    -- the collection: webhook-logs, integrations, replays, users, ...
    resource_type text NOT NULL,
    -- the resource's id when the path names one
    resource_id   text,
    method        text NOT NULL,
    path          text NOT NULL,
    status        integer NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at DESC, id DESC);
