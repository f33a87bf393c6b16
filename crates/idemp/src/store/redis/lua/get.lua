-- get: KEYS[1] record. ARGV: 1 now override.
-- Reply: {2, now, F..., scope, key} when live, else {0, now}.
local k = KEYS[1]
local now = now_ms(ARGV[1])
local r = redis.call('HMGET', k, 'state', 'token', 'fp', 'attempts', 'created', 'updated',
  'lease_until', 'expires', 'codec', 'compression', 'outcome', 'scope', 'key')
if not is_live(r[1], r[8], now) then
  return {0, now}
end
table.insert(r, 1, now)
table.insert(r, 1, 2)
return r
