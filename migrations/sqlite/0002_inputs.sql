-- Input files fully ingested, by content: an unchanged file is not read again on a rerun.
CREATE TABLE inputs (
    operation   TEXT   NOT NULL,
    sha256      TEXT   NOT NULL,
    spec        TEXT   NOT NULL,
    path        TEXT   NOT NULL,
    rows        BIGINT NOT NULL,
    ingested_at BIGINT NOT NULL,
    PRIMARY KEY (operation, sha256, spec)
);
