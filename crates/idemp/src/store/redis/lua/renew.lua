-- renew: KEYS[1] record.
-- ARGV: 1 token, 2 lease ms, 3 now override, 4 guard ms.
-- Reply: {1, lease_until} | {0[, current]} fenced.
local k = KEYS[1]
local now = now_ms(ARGV[3])
local h = redis.call('HMGET', k, 'state', 'token', 'expires', 'ttl')
local token = tonumber(ARGV[1])
if h[1] ~= 'p' or tonumber(h[2]) ~= token then
  return fenced(h[1], h[2], h[3], now)
end
local lease = tonumber(ARGV[2])
local lease_until = now + lease
redis.call('HSET', k, 'lease_until', lease_until, 'updated', now)
keep(k, math.max(lease, tonumber(h[4]) or 0), token, now, tonumber(ARGV[4]))
return {1, lease_until}
