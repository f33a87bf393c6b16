-- release: KEYS[1] record.
-- ARGV: 1 token, 2 now override, 3 guard ms, 4 channel, 5 message.
-- Reply: {1} released | {0[, current]} fenced.
local k = KEYS[1]
local now = now_ms(ARGV[2])
local h = redis.call('HMGET', k, 'state', 'token', 'expires')
local token = tonumber(ARGV[1])
if h[1] ~= 'p' or tonumber(h[2]) ~= token then
  return fenced(h[1], h[2], h[3], now)
end
tombstone(k, token, now, tonumber(ARGV[3]))
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {1}
