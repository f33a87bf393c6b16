-- idemp SQLite schema, version 2: the in-progress record keeps what makes a claim
-- repeatable after a lost reply.
--   nonce:    Claim::nonce of the claim that acquired the record (NULL: none), as
--             the signed 64-bit integer with the same bits
--   takeover: the previous owner's token when the record was acquired by a takeover
--             (so a repeated takeover reports the same one), NULL otherwise
-- Both are rewritten by every acquisition; rows of version 1 get NULL (no nonce
-- matches NULL, so their claims behave as before).
ALTER TABLE idemp_records ADD COLUMN nonce INTEGER;
ALTER TABLE idemp_records ADD COLUMN takeover INTEGER;
