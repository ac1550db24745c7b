-- Grant one budget lease on a key if the key has room (atomic: check and grant in one step).
-- KEYS[1]  the key's sorted set: member = lease token, score = expiry (ms, server clock)
-- ARGV[1]  lease token   ARGV[2]  ttl (ms)   ARGV[3]  limit (leases per key, fleet-wide)
-- Returns {granted (1 or 0), leases held after, ms until the earliest lease expires or -1}.
-- A token already present is renewed and counted as granted, so a retried acquire is safe.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if held >= tonumber(ARGV[3]) then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, held, tonumber(first[2]) - now}
  end
  held = held + 1
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + 1)
return {1, held, -1}
