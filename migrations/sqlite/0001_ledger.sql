-- The ledger: one row per target of one operation (a ClientId for the credential operations),
-- the only source of truth of a run. Times are epoch milliseconds (portable to PostgreSQL).
CREATE TABLE ledger_meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE items (
    id                       INTEGER PRIMARY KEY,
    operation                TEXT    NOT NULL,
    target                   TEXT    NOT NULL,
    state                    TEXT    NOT NULL DEFAULT 'pending',
    -- Calls sent for this item (throttled calls excluded).
    attempts                 BIGINT  NOT NULL DEFAULT 0,
    -- 1 when a call that may have taken effect was (or may have been) sent and its effect is
    -- not known: set durably before dispatch, cleared once the outcome is known.
    maybe_applied            BIGINT  NOT NULL DEFAULT 0,
    last_code                TEXT,
    last_message             TEXT,
    last_request_id          TEXT,
    source_file              TEXT    NOT NULL,
    source_line              BIGINT  NOT NULL,
    device_access_key_id     TEXT,
    device_access_key_secret TEXT,
    created_at               BIGINT  NOT NULL,
    updated_at               BIGINT  NOT NULL,
    UNIQUE (operation, target)
);
CREATE INDEX items_by_state ON items (operation, state, id);

-- Input rows that never became a target: their file, line and reason.
CREATE TABLE rejects (
    operation   TEXT   NOT NULL,
    source_file TEXT   NOT NULL,
    source_line BIGINT NOT NULL,
    raw         TEXT   NOT NULL,
    reason      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (operation, source_file, source_line)
);

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    operation   TEXT   NOT NULL,
    command     TEXT   NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    exit_code   BIGINT,
    summary     TEXT
);
