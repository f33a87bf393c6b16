-- idemp Postgres store, schema version 2.
-- The expires_at index made every claim and completion insert at its right-most leaf
-- (expiry instants only grow) and kept completions from being HOT updates: it cost
-- 10-20 % of settled executions per second. The sweeper now walks the table in ranges
-- of pages (TID range scans) instead.
DROP INDEX IF EXISTS __SCHEMA__.records_expires_at;
