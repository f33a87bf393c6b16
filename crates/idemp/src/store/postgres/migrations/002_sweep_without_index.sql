-- idemp Postgres store, schema version 2.
-- The expires_at index made every claim and completion insert at its right-most leaf
-- (expiry instants only grow): a hot page that capped concurrent throughput at about
-- half of a bare INSERT + UPDATE, and kept completions from being HOT updates. The
-- sweeper now walks the table in ranges of pages (TID range scans) instead.
DROP INDEX IF EXISTS __SCHEMA__.records_expires_at;
