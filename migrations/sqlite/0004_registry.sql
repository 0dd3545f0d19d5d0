-- The ledger as the registry of record: what every target went through, and the credential
-- each device holds now.

-- Every outcome that ended a target's calls (success, not_found, failed, invalid), in the order
-- recorded. It names credentials by DeviceAccessKeyId only: secrets live in `items` and `devices`.
CREATE TABLE history (
    id                   INTEGER PRIMARY KEY,
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

-- Each device's current credential: the newest the tool obtained (register, existing, fetch,
-- rotate); none after a revoke or a not_found. `previous_secret` is the one it replaced, kept
-- until the current one has been exported (or `ledger purge`). `secret_digest` tells a new
-- secret from the same one fetched again without reading either (they may be sealed).
CREATE TABLE devices (
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

-- An existing ledger: its finished targets become history, and each device's newest credential
-- (by the time it was recorded) its current one.
INSERT INTO history (target, operation, state, attempts, code, message, request_id,
                     device_access_key_id, source_file, source_line, at)
SELECT target, operation, state, attempts, last_code, last_message, last_request_id,
       device_access_key_id, source_file, source_line, updated_at
FROM items WHERE state <> 'pending'
ORDER BY updated_at, id;

INSERT INTO devices (target, state, operation, device_access_key_id, device_access_key_secret,
                     previous_secret, exported_at, updated_at)
SELECT target, state, operation,
       CASE WHEN state IN ('revoked', 'not_found') THEN NULL ELSE device_access_key_id END,
       CASE WHEN state IN ('revoked', 'not_found') THEN NULL ELSE device_access_key_secret END,
       previous_secret, exported_at, updated_at
FROM (
    SELECT items.*, ROW_NUMBER() OVER (PARTITION BY target ORDER BY updated_at DESC, id DESC) AS newest
    FROM items
    WHERE operation IN ('register', 'fetch', 'rotate', 'revoke')
      AND state IN ('registered', 'existing', 'fetched', 'rotated', 'revoked', 'not_found')
)
WHERE newest = 1;
