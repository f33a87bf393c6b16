-- claim: KEYS[1] record.
-- ARGV: 1 scope, 2 key, 3 fingerprint (raw bytes or ''), 4 lease ms, 5 ttl ms,
--       6 take over expired ('1'/'0'), 7 now override, 8 guard ms.
-- Reply: token (an integer: a fresh claim whose token is the clock, lease_until =
--        token + lease; the common case, kept small)
--      | {1, token, lease_until, previous token (0: none), attempt}
--      | {2, now, F...} existing | {3, now, F...} fingerprint mismatch.
local k = KEYS[1]
local now = now_ms(ARGV[7])
local state = redis.call('HGET', k, 'state')
local lease = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local lease_until = now + lease
local retain = lease
if ttl > retain then
  retain = ttl
end
local s_now = fmt('%d', now)

if not state then
  -- fast path: a fresh key
  local token = now
  if token < 1 then
    token = 1
  end
  local reply = {1, token, lease_until, 0, 1}
  if token == now then
    reply = token
  end
  if ARGV[3] == '' then
    redis.call('HSET', k, 'state', 'p', 'token', fmt('%d', token), 'scope', ARGV[1],
      'key', ARGV[2], 'created', s_now, 'lease_until', fmt('%d', lease_until), 'ttl', ARGV[5])
  else
    redis.call('HSET', k, 'state', 'p', 'token', fmt('%d', token), 'scope', ARGV[1],
      'key', ARGV[2], 'fp', ARGV[3], 'created', s_now, 'lease_until', fmt('%d', lease_until),
      'ttl', ARGV[5])
  end
  keep(k, retain, token, now, tonumber(ARGV[8]))
  return reply
end

local h = redis.call('HMGET', k, 'state', 'token', 'scope', 'key', 'fp', 'lease_until',
  'expires', 'attempts', 'created', 'w')
local seq = tonumber(h[2]) or 0
local token = seq + 1
if now > token then
  token = now
end
local prev = 0
local attempts = 1
local created = s_now
local fp = ARGV[3]
if is_live(h[1], h[7], now) then
  if h[3] ~= ARGV[1] or h[4] ~= ARGV[2] then
    return redis.error_reply('IDEMP_COLLISION two record ids share the key ' .. k)
  end
  if ARGV[3] ~= '' and h[5] and h[5] ~= ARGV[3] then
    return record(k, 3, now)
  end
  if h[1] ~= 'p' or tonumber(h[6]) > now or ARGV[6] ~= '1' then
    return record(k, 2, now)
  end
  -- take over an expired lease
  prev = seq
  attempts = (tonumber(h[8]) or 1) + 1
  created = h[9] or s_now
  if fp == '' then
    -- a takeover without fingerprint keeps the stored one
    fp = h[5] or ''
  end
  -- and keeps its waiters
  if h[10] then
    redis.call('DEL', k)
    redis.call('HSET', k, 'w', '1')
  else
    redis.call('DEL', k)
  end
else
  redis.call('DEL', k)
end
-- a tombstone, an expired settled record, or a taken-over lease: start afresh,
-- keeping the counter
redis.call('HSET', k, 'state', 'p', 'token', fmt('%d', token), 'scope', ARGV[1], 'key', ARGV[2],
  'attempts', fmt('%d', attempts), 'created', created, 'updated', s_now,
  'lease_until', fmt('%d', lease_until), 'ttl', ARGV[5])
if fp ~= '' then
  redis.call('HSET', k, 'fp', fp)
end
keep(k, retain, token, now, tonumber(ARGV[8]))
return {1, token, lease_until, prev, attempts}
