-- complete / fail: KEYS[1] record.
-- ARGV: 1 token, 2 state ('c'/'f'), 3 outcome bytes, 4 codec, 5 compression, 6 ttl ms,
--       7 now override, 8 guard ms, 9 channel, 10 message.
-- Reply: {1, expires} settled | {2} already settled by this token in this state
--      | {0[, current]} fenced.
local k = KEYS[1]
local now = now_ms(ARGV[7])
local h = redis.call('HMGET', k, 'state', 'token', 'expires')
local token = tonumber(ARGV[1])
if h[1] ~= 'p' or tonumber(h[2]) ~= token then
  if h[1] == ARGV[2] and tonumber(h[2]) == token and is_live(h[1], h[3], now) then
    return {2}
  end
  return fenced(h[1], h[2], h[3], now)
end
local ttl = tonumber(ARGV[6])
local expires = now + ttl
redis.call('HSET', k, 'state', ARGV[2], 'outcome', ARGV[3], 'codec', ARGV[4],
  'compression', ARGV[5], 'updated', now, 'expires', expires)
keep(k, ttl, token, now, tonumber(ARGV[8]))
redis.call('PUBLISH', ARGV[9], ARGV[10])
return {1, expires}
