-- get (and watch): KEYS[1] record. ARGV: 1 now override, 2 '1' to mark an in-progress
-- record as waited for (its settle, release or purge then publishes).
-- Reply: {2, now, fields...} when live, else {0, now}.
local k = KEYS[1]
local now = clock(ARGV[1])
local r = fields(k)
if not is_live(r[1], r[9], r[8], now) then
  return {0, now}
end
if ARGV[2] == '1' and r[1] == 'p' then
  redis.call('HSET', k, 'w', '1')
end
table.insert(r, 1, now)
table.insert(r, 1, 2)
return r
