-- Contract section 13: shadow replay. An operator re-runs the comment use case over stored
-- events with something changed (persona, reply template, system prompt, LLM model); the
-- replay delivers nothing and changes no log: what it got is kept here, next to what the
-- log had when the replay was made.
--
-- A replay's items are chosen when it is made (the filter is kept only to show it), so
-- its progress is `done / total` over a fixed set. Its jobs (`replay_chunk`) run behind
-- live work (lower priority), one at a time per replay, each taking the next pending items
-- (core/src/replays.rs owns the items' states: pending → done | failed).
CREATE TABLE replays (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- the log filter it was made with, as given (to show it)
    filter          jsonb NOT NULL,
    -- what it tries instead (each optional; none: the same use case again)
    persona_id      uuid,
    reply_template  text,
    system_prompt   text,
    model           text,
    total           integer NOT NULL
);

CREATE TABLE replay_items (
    replay_id       bigint NOT NULL REFERENCES replays (id) ON DELETE CASCADE,
    -- no foreign key: a replay keeps its record if the log is deleted afterwards
    log_id          bigint NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    -- the log's own result when the replay was made
    old_status      text NOT NULL,
    old_outcome     text,
    old_skip_reason text,
    old_reply       text,
    -- the replay's result (outcome `replied`, `skipped` or `recorded`; or an error)
    new_outcome     text,
    new_skip_reason text,
    new_reply       text,
    error           text,
    finished_at     timestamptz,
    PRIMARY KEY (replay_id, log_id)
);
CREATE INDEX replay_items_pending ON replay_items (replay_id, log_id) WHERE status = 'pending';
