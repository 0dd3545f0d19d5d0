-- The ledger on PostgreSQL: the same tables and meanings as migrations/sqlite/ (0001-0004 in
-- one), in PostgreSQL's SQL, plus what several workers sharing it need: who holds a target
-- (`owner`), a fencing token (`epoch`) and the workers' leases. Times the ledger records are
-- epoch milliseconds, as in SQLite; leases use the database's own clock (timestamptz).
CREATE TABLE ledger_meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per live process. A new id per process start; `lease_until` is renewed by its
-- heartbeat. A worker whose lease ran out holds nothing: its targets may be claimed again.
CREATE TABLE workers (
    id           TEXT        NOT NULL PRIMARY KEY,
    host         TEXT        NOT NULL,
    pid          BIGINT      NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until  TIMESTAMPTZ NOT NULL,
    state        TEXT        NOT NULL DEFAULT 'live'
);

CREATE TABLE items (
    id                       BIGSERIAL PRIMARY KEY,
    operation                TEXT   NOT NULL,
    target                   TEXT   NOT NULL,
    state                    TEXT   NOT NULL DEFAULT 'pending',
    attempts                 BIGINT NOT NULL DEFAULT 0,
    maybe_applied            BIGINT NOT NULL DEFAULT 0,
    last_code                TEXT,
    last_message             TEXT,
    last_request_id          TEXT,
    source_file              TEXT   NOT NULL,
    source_line              BIGINT NOT NULL,
    device_access_key_id     TEXT,
    device_access_key_secret TEXT,
    created_at               BIGINT NOT NULL,
    updated_at               BIGINT NOT NULL,
    previous_secret          TEXT,
    exported_at              BIGINT,
    -- The worker that claimed it last; NULL once it is handed back or never claimed.
    owner                    TEXT,
    -- +1 on every claim: an outcome is stored only under the epoch it was claimed with.
    epoch                    BIGINT NOT NULL DEFAULT 0,
    UNIQUE (operation, target)
);
CREATE INDEX items_by_state ON items (operation, state, id);
-- The pending targets each worker holds: a claim looks for dead workers that still hold some.
CREATE INDEX items_held ON items (owner) WHERE state = 'pending' AND owner IS NOT NULL;

CREATE TABLE rejects (
    id          BIGSERIAL NOT NULL UNIQUE,
    operation   TEXT   NOT NULL,
    source_file TEXT   NOT NULL,
    source_line BIGINT NOT NULL,
    raw         TEXT   NOT NULL,
    reason      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (operation, source_file, source_line)
);

CREATE TABLE runs (
    id          BIGSERIAL PRIMARY KEY,
    operation   TEXT   NOT NULL,
    command     TEXT   NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    exit_code   BIGINT,
    summary     TEXT
);

CREATE TABLE inputs (
    operation   TEXT   NOT NULL,
    sha256      TEXT   NOT NULL,
    spec        TEXT   NOT NULL,
    path        TEXT   NOT NULL,
    rows        BIGINT NOT NULL,
    ingested_at BIGINT NOT NULL,
    PRIMARY KEY (operation, sha256, spec)
);

CREATE TABLE history (
    id                   BIGSERIAL PRIMARY KEY,
    target               TEXT   NOT NULL,
    operation            TEXT   NOT NULL,
    state                TEXT   NOT NULL,
    attempts             BIGINT NOT NULL,
    code                 TEXT,
    message              TEXT,
    request_id           TEXT,
    device_access_key_id TEXT,
    source_file          TEXT,
    source_line          BIGINT,
    at                   BIGINT NOT NULL
);
CREATE INDEX history_by_target ON history (target, id);

CREATE TABLE devices (
    id                       BIGSERIAL NOT NULL UNIQUE,
    target                   TEXT   NOT NULL PRIMARY KEY,
    state                    TEXT   NOT NULL,
    operation                TEXT   NOT NULL,
    device_access_key_id     TEXT,
    device_access_key_secret TEXT,
    secret_digest            TEXT,
    previous_secret          TEXT,
    exported_at              BIGINT,
    updated_at               BIGINT NOT NULL
);
