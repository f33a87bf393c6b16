-- claim: KEYS[1] record.
-- ARGV: 1 id, 2 fingerprint (raw bytes or ''), 3 lease ms, 4 ttl ms,
--       5 take over expired ('1'/'0'), 6 now override, 7 max(lease + ttl, guard) ms,
--       8 guard ms, 9 the claimant's nonce (decimal, or '' for none).
-- Reply: token (an integer: a fresh claim whose token is the clock in microseconds,
--        lease_until = token / 1000 + lease; the common case, kept small)
--      | {1, token, lease_until, previous token (0: none), attempt}
--      | {2, now, fields...} existing | {3, now, fields...} fingerprint mismatch.
local k = KEYS[1]
local now, now_s, now_us, token_s = clock(ARGV[6])
local state = redis.call('HGET', k, 'state')

if not state and now >= 1 then
  -- fast path: a fresh key; token = now_us, created = since = now
  -- one HSET whatever is optional (fingerprint, nonce): each call costs
  if ARGV[2] == '' and ARGV[9] == '' then
    redis.call('HSET', k, 'state', 'p', 'token', token_s, 'created', now_s, 'id', ARGV[1],
      'lease', ARGV[3], 'ttl', ARGV[4])
  elseif ARGV[2] == '' then
    redis.call('HSET', k, 'state', 'p', 'token', token_s, 'created', now_s, 'id', ARGV[1],
      'lease', ARGV[3], 'ttl', ARGV[4], 'n', ARGV[9])
  elseif ARGV[9] == '' then
    redis.call('HSET', k, 'state', 'p', 'token', token_s, 'created', now_s, 'id', ARGV[1],
      'lease', ARGV[3], 'ttl', ARGV[4], 'fp', ARGV[2])
  else
    redis.call('HSET', k, 'state', 'p', 'token', token_s, 'created', now_s, 'id', ARGV[1],
      'lease', ARGV[3], 'ttl', ARGV[4], 'fp', ARGV[2], 'n', ARGV[9])
  end
  redis.call('PEXPIRE', k, ARGV[7])
  return now_us
end

local h = redis.call('HMGET', k, 'state', 'token', 'id', 'fp', 'lease', 'ttl', 'settled',
  'attempts', 'created', 'since', 'w', 'n', 'pv')
local seq = tonumber(h[2]) or 0
local token = seq + 1
if now_us > token then
  token = now_us
end
local lease = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local prev = 0
local attempts = 1
local created = now_s
local fp = ARGV[2]
local waited = false
if is_live(h[1], h[7], h[6], now) then
  if h[3] ~= ARGV[1] then
    return redis.error_reply('IDEMP_COLLISION two record ids share the key ' .. k)
  end
  if ARGV[2] ~= '' and h[4] and h[4] ~= ARGV[2] then
    return record(k, 3, now)
  end
  if h[1] == 'p' and ARGV[9] ~= '' and h[12] == ARGV[9] then
    -- the claimant's own claim, repeated (its reply was lost): the same acquisition,
    -- with the lease renewed to now + lease (kept until lease_until + ttl)
    redis.call('HSET', k, 'since', now_s, 'lease', ARGV[3], 'ttl', ARGV[4])
    keep(k, lease + ttl, seq, now, tonumber(ARGV[8]))
    return {1, seq, now + lease, tonumber(h[13]) or 0, tonumber(h[8]) or 1}
  end
  if h[1] ~= 'p' or ARGV[5] ~= '1'
      or tonumber(h[10] or h[9] or h[2]) + tonumber(h[5]) > now then
    return record(k, 2, now)
  end
  -- take over an expired lease: keep the first claim's time, the fingerprint when the
  -- claimant has none, and the waiters
  prev = seq
  attempts = (tonumber(h[8]) or 1) + 1
  created = h[9] or h[2]
  if fp == '' then
    fp = h[4] or ''
  end
  waited = h[11]
end
-- a tombstone, an expired settled record, or a taken-over lease: start afresh,
-- keeping the counter
redis.call('DEL', k)
redis.call('HSET', k, 'state', 'p', 'token', fmt('%d', token), 'id', ARGV[1],
  'lease', ARGV[3], 'ttl', ARGV[4], 'attempts', fmt('%d', attempts), 'created', created,
  'since', now_s)
if fp ~= '' then
  redis.call('HSET', k, 'fp', fp)
end
if waited then
  redis.call('HSET', k, 'w', '1')
end
if ARGV[9] ~= '' then
  redis.call('HSET', k, 'n', ARGV[9])
end
if prev ~= 0 then
  redis.call('HSET', k, 'pv', fmt('%d', prev))
end
-- kept until lease_until + ttl: an abandoned record stays ambiguous for its ttl
local retain = lease + ttl
keep(k, retain, token, now, tonumber(ARGV[8]))
return {1, token, now + lease, prev, attempts}
