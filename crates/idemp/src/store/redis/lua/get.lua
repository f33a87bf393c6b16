-- get: KEYS[1] record. ARGV: 1 now override.
-- Reply: {2, now, F..., scope, key} when live, else {0, now}.
local k = KEYS[1]
local now = now_ms(ARGV[1])
local h = redis.call('HMGET', k, 'state', 'expires')
if not is_live(h[1], h[2], now) then
  return {0, now}
end
local r = record(k, 2, now)
local id = redis.call('HMGET', k, 'scope', 'key')
table.insert(r, id[1])
table.insert(r, id[2])
return r
