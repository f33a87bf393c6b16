-- idemp Postgres store, schema version 3.
-- The nonce of the claim that acquired an in-progress row: the same claim repeated
-- (its reply was lost) gets the same acquisition back instead of finding the key
-- blocked until the lease passes. Nullable, no default: adding it rewrites nothing,
-- and rows written before it (NULL) match no claim.
ALTER TABLE __SCHEMA__.records ADD COLUMN IF NOT EXISTS nonce bigint;
