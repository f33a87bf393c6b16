-- idemp Redis store: shared prelude of every script (see store/redis/mod.rs).
--
-- One hash per record. Fields:
--   state    'p' in progress, 'c' completed, 'f' failed, 't' tombstone
--   token    the fencing token (decimal)
--   id       '<byte length of scope>:<scope><key>' (checked against the caller's)
--   fp       raw 32-byte SHA-256 of the payload (absent: none)
--   attempts acquisitions of the key (absent: 1)
--   created  when first claimed, ms (absent only in records of earlier versions, whose
--            fresh claims had a millisecond token equal to the claim's clock)
--   since    when the current lease started (claim or renew), ms (absent: created)
--   lease    lease length, ms: lease_until = since + lease
--   ttl      retention, ms: of a settled record from `settled`, of an in-progress one
--            from its lease_until (physically: lease + ttl from its claim or renewal)
--   settled  when completed or failed, ms: expires = settled + ttl
--   enc      '<codec>:<compression>' of the outcome
--   outcome  the outcome bytes
--   n        the nonce of the claim that acquired the in-progress record (absent:
--            none): the same claim repeated gets the same acquisition back
--   pv       after a takeover, the token that was taken over (absent: none)
--   w        present while someone waits: only then do settle, release and purge
--            publish a notification
--
-- Tokens are hybrid logical clock values in microseconds:
-- token = max(previous token + 1, now_us). The previous token survives a release or
-- purge in a tombstone (state 't') that is kept until the clock has passed it (plus a
-- guard), so tokens stay strictly increasing per key even after the record is gone.
-- A key would need more than one claim per microsecond to run ahead of the clock,
-- which no server serves: so a restart or failover that loses the records (and their
-- tombstones) still issues tokens above every token issued before, as long as the
-- server's clock does not go back. (Earlier versions issued milliseconds, which a hot
-- key ran seconds ahead of the clock; such tokens are still read, see token_ms.)
--
-- The hot paths (fresh claim, settle) store times as the strings TIME gives and
-- durations as the caller passed them: formatting a Lua number costs about a
-- microsecond, more than most commands here.
local fmt = string.format

-- The clock: milliseconds since the epoch from the server's TIME (one clock for
-- every worker), or the caller's override (tests). Returns the number and its
-- decimal string, and the same instant in microseconds (the tokens' unit) as a
-- number and a decimal string (built from TIME's strings: no number formatting).
local function clock(override)
  if override ~= '' then
    local ms = tonumber(override)
    return ms, override, ms * 1000, override .. '000'
  end
  local t = redis.call('TIME')
  local us6 = string.sub('00000' .. t[2], -6)
  local s = t[1] .. string.sub(us6, 1, 3)
  local us = t[1] .. us6
  return tonumber(s), s, tonumber(us), us
end

-- The instant of a token in ms: tokens are microseconds, those of earlier versions
-- milliseconds (told apart by their size next to the clock's ms).
local function token_ms(token, now)
  if token >= now * 500 then
    return math.floor(token / 1000)
  end
  return token
end

-- Whether a record is visible at `now`.
local function is_live(state, settled, ttl, now)
  if state == 'p' then
    return true
  end
  if state == 'c' or state == 'f' then
    return (tonumber(settled) or 0) + (tonumber(ttl) or 0) > now
  end
  return false
end

-- Physical retention: at least `ms`, and at least until the clock has passed the
-- record's token by `guard` ms (the token counter must outlive every issued token).
local function keep(k, ms, token, now, guard)
  local lead = token_ms(token, now) - now + guard
  if lead > ms then
    ms = lead
  end
  if ms < 1 then
    ms = 1
  end
  redis.call('PEXPIRE', k, fmt('%d', ms))
end

-- The fields of a record reply, in order.
local function fields(k)
  return redis.call('HMGET', k, 'state', 'token', 'fp', 'attempts', 'created', 'since',
    'lease', 'ttl', 'settled', 'enc', 'outcome', 'id')
end

-- The full record as a reply: {code, now, fields...}.
local function record(k, code, now)
  local r = fields(k)
  table.insert(r, 1, now)
  table.insert(r, 1, code)
  return r
end

-- Replaces the record by a tombstone that only keeps the token counter.
local function tombstone(k, token, now, guard)
  redis.call('DEL', k)
  redis.call('HSET', k, 'state', 't', 'token', fmt('%d', token))
  keep(k, 0, token, now, guard)
end

-- Publishes the record's digest on the store's channel: the key is
-- '<prefix>:<16 hex>:{<32 hex digest>}' and the channel '<prefix>:settled' (see
-- layout.rs), so neither is passed by the caller.
local function announce(k)
  redis.call('PUBLISH', string.sub(k, 1, -53) .. ':settled', string.sub(k, -33, -2))
end

-- Fenced reply: {0, current token} when a live record holds another token, else {0}.
local function fenced(state, token, settled, ttl, now)
  if is_live(state, settled, ttl, now) then
    return {0, tonumber(token)}
  end
  return {0}
end
