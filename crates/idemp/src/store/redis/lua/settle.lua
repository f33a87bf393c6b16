-- complete / fail: KEYS[1] record.
-- ARGV: 1 token, 2 state ('c'/'f'), 3 outcome bytes, 4 codec, 5 compression, 6 ttl ms,
--       7 now override, 8 guard ms, 9 channel, 10 message.
-- Reply: 1 settled | {0[, current]} fenced (a settled record has no owner,
--      even for the token that settled it).
local k = KEYS[1]
local now = now_ms(ARGV[7])
local h = redis.call('HMGET', k, 'state', 'token', 'expires', 'w')
if h[1] ~= 'p' or h[2] ~= ARGV[1] then
  return fenced(h[1], h[2], h[3], now)
end
local ttl = tonumber(ARGV[6])
local expires = now + ttl
redis.call('HSET', k, 'state', ARGV[2], 'outcome', ARGV[3], 'codec', ARGV[4],
  'compression', ARGV[5], 'updated', fmt('%d', now), 'expires', fmt('%d', expires))
keep(k, ttl, tonumber(ARGV[1]), now, tonumber(ARGV[8]))
if h[4] then
  redis.call('PUBLISH', ARGV[9], ARGV[10])
end
return 1
