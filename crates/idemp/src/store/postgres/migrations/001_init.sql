-- idemp Postgres store, schema version 1.
-- `__SCHEMA__` is replaced by the quoted schema name before running.

-- Fencing tokens: one global sequence, so a new token is larger than every token
-- issued before it for any key (strictly increasing per key, across releases and purges).
CREATE SEQUENCE __SCHEMA__.tokens AS bigint MINVALUE 1;

CREATE TABLE __SCHEMA__.records (
    scope       text COLLATE "C" NOT NULL,
    key         text COLLATE "C" NOT NULL,
    -- SHA-256 of the payload (32 bytes) or NULL.
    fingerprint bytea,
    -- 0 in progress, 1 completed, 2 failed, 3 gone (released or purged: a tombstone that
    -- keeps the key's row so the next claim draws its token after the row lock).
    state       smallint NOT NULL CHECK (state BETWEEN 0 AND 3),
    token       bigint NOT NULL,
    -- In progress after a takeover: the token that was taken over.
    prev_token  bigint,
    attempts    integer NOT NULL,
    -- Milliseconds since the UNIX epoch.
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    lease_until bigint,
    -- The claim's ttl; an in-progress record expires `ttl_ms` after its lease passes.
    ttl_ms      bigint NOT NULL,
    -- After this instant the row is invisible and the sweeper deletes it.
    expires_at  bigint NOT NULL,
    -- A waiter is listening: settling this row sends a NOTIFY. (NOTIFY serialises
    -- committing transactions on a database-wide lock, so it is only sent when needed.)
    watched     boolean NOT NULL DEFAULT false,
    codec       smallint,
    compression smallint,
    outcome     bytea,
    PRIMARY KEY (scope, key)
) WITH (fillfactor = 90);

CREATE INDEX records_expires_at ON __SCHEMA__.records (expires_at);
