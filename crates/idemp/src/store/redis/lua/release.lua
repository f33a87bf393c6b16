-- release: KEYS[1] record.
-- ARGV: 1 token, 2 now override, 3 guard ms.
-- Reply: 1 released | {0[, current]} fenced.
local k = KEYS[1]
local now = clock(ARGV[2])
local h = redis.call('HMGET', k, 'state', 'token', 'settled', 'ttl', 'w')
if h[1] ~= 'p' or h[2] ~= ARGV[1] then
  return fenced(h[1], h[2], h[3], h[4], now)
end
tombstone(k, tonumber(ARGV[1]), now, tonumber(ARGV[3]))
if h[5] then
  announce(k)
end
return 1
