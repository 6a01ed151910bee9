-- The directory's change counter, so worker processes can cache users, integrations,
-- personas, templates and posts (the comment use case's lookups) without ever serving
-- stale data.
--
-- Every write to one of those tables, from any code path (admin API, delivery's 410
-- switch-off, demo data, psql), bumps `directory_version.version` in the writer's own
-- transaction. A worker reads the counter in the same statement that starts a log, so
-- when it differs from what the worker's cache was filled under, the cache is dropped
-- before any lookup: an event started after an admin write commits always sees that
-- write. The NOTIFY on `hookq_directory` lets other listeners (dashboards, API caches)
-- react without polling.

CREATE TABLE directory_version (
    -- a single row
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint  NOT NULL
);
INSERT INTO directory_version (id, version) VALUES (true, 1);

CREATE FUNCTION hookq_directory_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE directory_version SET version = version + 1;
    PERFORM pg_notify('hookq_directory', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

-- Statement-level: one bump per writing statement, however many rows it touches.
CREATE TRIGGER users_directory_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION hookq_directory_changed();
CREATE TRIGGER integrations_directory_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON integrations
    FOR EACH STATEMENT EXECUTE FUNCTION hookq_directory_changed();
CREATE TRIGGER personas_directory_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON personas
    FOR EACH STATEMENT EXECUTE FUNCTION hookq_directory_changed();
CREATE TRIGGER persona_templates_directory_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON persona_templates
    FOR EACH STATEMENT EXECUTE FUNCTION hookq_directory_changed();
CREATE TRIGGER posts_directory_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON posts
    FOR EACH STATEMENT EXECUTE FUNCTION hookq_directory_changed();
