-- claim: KEYS[1] record.
-- ARGV: 1 scope, 2 key, 3 fingerprint (raw bytes or ''), 4 lease ms, 5 ttl ms,
--       6 take over expired ('1'/'0'), 7 now override, 8 guard ms.
-- Reply: {1, token, lease_until, previous token (0: none), attempt}
--      | {2, now, F...} existing | {3, now, F...} fingerprint mismatch.
local k = KEYS[1]
local now = now_ms(ARGV[7])
local h = redis.call('HMGET', k, 'state', 'token', 'scope', 'key', 'fp', 'lease_until',
  'expires', 'attempts', 'created')
local seq = tonumber(h[2]) or 0
local prev = 0
local attempts = 1
local created = now
if is_live(h[1], h[7], now) then
  if h[3] ~= ARGV[1] or h[4] ~= ARGV[2] then
    return redis.error_reply('IDEMP_COLLISION two record ids share the key ' .. k)
  end
  if ARGV[3] ~= '' and h[5] and h[5] ~= '' and h[5] ~= ARGV[3] then
    return record(k, 3, now)
  end
  if h[1] ~= 'p' or tonumber(h[6]) > now or ARGV[6] ~= '1' then
    return record(k, 2, now)
  end
  prev = seq
  attempts = (tonumber(h[8]) or 1) + 1
  created = tonumber(h[9]) or now
elseif h[1] then
  -- a tombstone or an expired settled record: start afresh, keeping the counter
  redis.call('DEL', k)
end
local token = math.max(seq + 1, now)
local lease = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local lease_until = now + lease
redis.call('HSET', k, 'state', 'p', 'token', token, 'scope', ARGV[1], 'key', ARGV[2],
  'fp', ARGV[3], 'attempts', attempts, 'created', created, 'updated', now,
  'lease_until', lease_until, 'ttl', ttl)
keep(k, math.max(lease, ttl), token, now, tonumber(ARGV[8]))
return {1, token, lease_until, prev, attempts}
