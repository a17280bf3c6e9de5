//! The `switchyard` schema in the target database, created and upgraded
//! idempotently. Each step runs once, recorded in `schema_version`.

/// Ordered schema steps; never edit one that has shipped, append instead.
pub(crate) const STEPS: &[&str] = &[
    // 1: migrations, rules version, instances, checkpoints, audit log.
    "CREATE TABLE IF NOT EXISTS switchyard.migrations (
        name        text PRIMARY KEY,
        phase       text NOT NULL,
        spec        jsonb NOT NULL,
        state       jsonb NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        updated_at  timestamptz NOT NULL DEFAULT now()
     );
     CREATE TABLE IF NOT EXISTS switchyard.rules (
        id          boolean PRIMARY KEY DEFAULT true CHECK (id),
        version     bigint NOT NULL,
        published_at timestamptz NOT NULL DEFAULT now()
     );
     INSERT INTO switchyard.rules (id, version) VALUES (true, 0) ON CONFLICT DO NOTHING;
     CREATE TABLE IF NOT EXISTS switchyard.instances (
        id          text PRIMARY KEY,
        heartbeat   timestamptz NOT NULL DEFAULT now(),
        acknowledged bigint NOT NULL DEFAULT 0,
        proxy_addr  text,
        control_addr text
     );
     CREATE TABLE IF NOT EXISTS switchyard.checkpoints (
        migration   text PRIMARY KEY REFERENCES switchyard.migrations(name) ON DELETE CASCADE,
        last_key    jsonb,
        rows_done   bigint NOT NULL DEFAULT 0,
        updated_at  timestamptz NOT NULL DEFAULT now()
     );
     CREATE TABLE IF NOT EXISTS switchyard.events (
        id          bigserial PRIMARY KEY,
        at          timestamptz NOT NULL DEFAULT clock_timestamp(),
        actor       text NOT NULL,
        migration   text,
        action      text NOT NULL,
        detail      jsonb NOT NULL DEFAULT '{}'
     );",
    // 2: DDL verbs relayed to the job holder (replaces requests kept in the
    // migration's state and polled).
    "CREATE TABLE IF NOT EXISTS switchyard.requests (
        id          bigserial PRIMARY KEY,
        migration   text NOT NULL REFERENCES switchyard.migrations(name) ON DELETE CASCADE,
        verb        text NOT NULL,
        force       boolean NOT NULL,
        actor       text NOT NULL,
        asked_by    text NOT NULL,
        asked_at    timestamptz NOT NULL DEFAULT now(),
        taken_by    text,
        taken_at    timestamptz,
        answer      jsonb,
        answered_at timestamptz
     );
     CREATE INDEX IF NOT EXISTS requests_open ON switchyard.requests (id) WHERE taken_by IS NULL;",
    // 3: per instance, statements that still depend on a migration's
    // legacy side ({migration: LegacyUse}), for `complete`.
    "ALTER TABLE switchyard.instances ADD COLUMN IF NOT EXISTS legacy_uses jsonb NOT NULL DEFAULT '{}'",
];

/// Creates the schema and applies missing steps, under an advisory lock so
/// that instances starting together do not race.
pub(crate) const BOOTSTRAP: &str = "
    SELECT pg_advisory_xact_lock(hashtext('switchyard.schema'));
    CREATE SCHEMA IF NOT EXISTS switchyard;
    CREATE TABLE IF NOT EXISTS switchyard.schema_version (
        version integer PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
    );";
