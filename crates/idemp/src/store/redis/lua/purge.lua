-- purge: KEYS[1] record.
-- ARGV: 1 now override, 2 guard ms.
-- Reply: 1 when a live record was removed, else 0.
local k = KEYS[1]
local now = clock(ARGV[1])
local h = redis.call('HMGET', k, 'state', 'token', 'settled', 'ttl', 'w')
if not is_live(h[1], h[3], h[4], now) then
  return 0
end
tombstone(k, tonumber(h[2]), now, tonumber(ARGV[2]))
if h[5] then
  announce(k)
end
return 1
