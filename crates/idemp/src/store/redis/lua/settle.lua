-- complete / fail: KEYS[1] record.
-- ARGV: 1 token, 2 state ('c'/'f'), 3 outcome bytes, 4 enc ('codec:compression'),
--       5 ttl ms, 6 now override, 7 max(ttl, guard) ms, 8 guard ms, 9 channel,
--       10 message.
-- Reply: 1 settled | {0[, current]} fenced (a settled record has no owner, even for
--      the token that settled it).
local k = KEYS[1]
local now, now_s = clock(ARGV[6])
local h = redis.call('HMGET', k, 'state', 'token', 'settled', 'ttl', 'w')
if h[1] ~= 'p' or h[2] ~= ARGV[1] then
  return fenced(h[1], h[2], h[3], h[4], now)
end
redis.call('HSET', k, 'state', ARGV[2], 'outcome', ARGV[3], 'enc', ARGV[4],
  'settled', now_s, 'ttl', ARGV[5])
local token = tonumber(ARGV[1])
if token_ms(token, now) > now then
  -- the token ran ahead of the clock: keep its counter until the clock passes it
  keep(k, tonumber(ARGV[5]), token, now, tonumber(ARGV[8]))
else
  redis.call('PEXPIRE', k, ARGV[7])
end
if h[5] then
  redis.call('PUBLISH', ARGV[9], ARGV[10])
end
return 1
