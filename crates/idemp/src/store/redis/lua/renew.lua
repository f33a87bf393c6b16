-- renew: KEYS[1] record.
-- ARGV: 1 token, 2 lease ms, 3 now override, 4 guard ms.
-- Reply: {1, lease_until} | {0[, current]} fenced.
local k = KEYS[1]
local now, now_s = clock(ARGV[3])
local h = redis.call('HMGET', k, 'state', 'token', 'settled', 'ttl')
if h[1] ~= 'p' or h[2] ~= ARGV[1] then
  return fenced(h[1], h[2], h[3], h[4], now)
end
local lease = tonumber(ARGV[2])
redis.call('HSET', k, 'since', now_s, 'lease', ARGV[2])
-- kept until the new lease_until + ttl (see claim)
local retain = lease + (tonumber(h[4]) or 0)
keep(k, retain, tonumber(ARGV[1]), now, tonumber(ARGV[4]))
return {1, now + lease}
