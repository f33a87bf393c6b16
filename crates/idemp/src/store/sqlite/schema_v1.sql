-- idemp SQLite schema, version 1.
--
-- idemp_meta holds the schema version and the per-file fencing-token sequence.
-- Tokens come from one counter for the whole file, so they are strictly increasing
-- per key across takeovers, releases, purges and sweeps (a deleted record cannot
-- take its last token with it).
CREATE TABLE idemp_meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO idemp_meta (name, value) VALUES ('schema_version', 1), ('token_seq', 0);

-- One row per (scope, key).
--   state:       0 in progress, 1 completed, 2 failed
--   lease_until: ms since the epoch while in progress, NULL once settled
--   ttl_ms:      retention asked by the claim (kept to move purge_at on renew)
--   purge_at:    when the row stops being live: settled_at + ttl once settled,
--                lease_until + ttl while in progress (an abandoned claim is kept
--                ttl after its lease passed). Rows with purge_at <= now are
--                invisible and removed by sweep.
--   codec, compression: small ints of idemp::store::{Codec, Compression}
CREATE TABLE idemp_records (
    scope       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint BLOB,
    state       INTEGER NOT NULL,
    token       INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    lease_until INTEGER,
    ttl_ms      INTEGER NOT NULL,
    purge_at    INTEGER NOT NULL,
    codec       INTEGER,
    compression INTEGER,
    outcome     BLOB,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;

CREATE INDEX idemp_records_purge_at ON idemp_records (purge_at);
