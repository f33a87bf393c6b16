-- idemp Redis store: shared prelude of every script (see store/redis/mod.rs).
--
-- One hash per record. Fields: scope, key, state ('p' in progress, 'c' completed,
-- 'f' failed, 't' tombstone), token, fp (raw 32-byte SHA-256 or ''), attempts,
-- created, updated, lease_until, ttl, expires, codec, compression, outcome.
--
-- Tokens are hybrid logical clock values: token = max(previous token + 1, now_ms).
-- The previous token survives a release or purge in a tombstone (state 't') that is
-- kept until the clock has passed it (plus a guard), so tokens stay strictly
-- increasing per key even after the record is gone.
local F = {'state', 'token', 'fp', 'attempts', 'created', 'updated', 'lease_until',
  'expires', 'codec', 'compression', 'outcome'}

-- Milliseconds since the epoch from the server's clock (one clock for every worker),
-- or the caller's override (tests).
local function now_ms(override)
  if override ~= '' then
    return tonumber(override)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether a record with this state/expiry is visible at `now`.
local function is_live(state, expires, now)
  if state == 'p' then
    return true
  end
  if state == 'c' or state == 'f' then
    return (tonumber(expires) or 0) > now
  end
  return false
end

-- Physical retention: at least `ms`, and at least until the clock has passed the
-- record's token by `guard` ms (the token counter must outlive every issued token).
local function keep(k, ms, token, now, guard)
  local lead = token - now + guard
  if lead > ms then
    ms = lead
  end
  if ms < 1 then
    ms = 1
  end
  redis.call('PEXPIRE', k, ms)
end

-- The full record as a reply: {code, now, F...}.
local function record(k, code, now)
  local r = redis.call('HMGET', k, unpack(F))
  table.insert(r, 1, now)
  table.insert(r, 1, code)
  return r
end

-- Replaces the record by a tombstone that only keeps the token counter.
local function tombstone(k, token, now, guard)
  redis.call('DEL', k)
  redis.call('HSET', k, 'state', 't', 'token', token)
  keep(k, 0, token, now, guard)
end

-- Fenced reply: {0, current token} when a live record holds another token, else {0}.
local function fenced(state, token, expires, now)
  if is_live(state, expires, now) then
    return {0, tonumber(token)}
  end
  return {0}
end
