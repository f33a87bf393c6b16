-- complete / fail: KEYS[1] record.
-- ARGV: 1 token, 2 state ('c'/'f'), 3 outcome bytes, 4 enc ('codec:compression'),
--       5 ttl ms, 6 now override, 7 max(ttl, guard) ms, 8 guard ms.
-- Reply: 1 settled | {0[, current]} fenced (a settled record has no owner, even for
--      the token that settled it).
local k = KEYS[1]
local now, now_s = clock(ARGV[6])
-- (the fields of the fenced reply only when fenced: each field read is a scan of the
-- hash's listpack)
local h = redis.call('HMGET', k, 'state', 'token', 'w')
if h[1] ~= 'p' or h[2] ~= ARGV[1] then
  local e = redis.call('HMGET', k, 'settled', 'ttl')
  return fenced(h[1], h[2], e[1], e[2], now)
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
if h[3] then
  announce(k)
end
return 1
