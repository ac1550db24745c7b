-- Renew many budget leases in one round trip.
-- KEYS[i]      the sorted set of lease i (a key appears once per lease held on it)
-- ARGV[1]      ttl (ms)
-- ARGV[1+i]    token of lease i
-- ARGV[1+n+i]  limit for lease i, or 0: a lease the set no longer has is then lost;
--              with a limit (a fallback lease granted while Redis was away) it is
--              added if the key has room.
-- Returns one status per lease: 1 renewed, 2 added, 0 lost.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local n = #KEYS
local swept = {}
local out = {}
for i = 1, n do
  local key = KEYS[i]
  if not swept[key] then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    swept[key] = true
  end
  local token = ARGV[1 + i]
  local limit = tonumber(ARGV[1 + n + i])
  if redis.call('ZSCORE', key, token) then
    redis.call('ZADD', key, 'XX', now + ttl, token)
    out[i] = 1
  elseif limit > 0 and redis.call('ZCARD', key) < limit then
    redis.call('ZADD', key, now + ttl, token)
    out[i] = 2
  else
    out[i] = 0
  end
  if out[i] > 0 then
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    redis.call('PEXPIREAT', key, tonumber(last[2]) + 1)
  end
end
return out
