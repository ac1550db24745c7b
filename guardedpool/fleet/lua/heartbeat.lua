-- A worker's heartbeat and the renewal of every key it owns, in one round trip.
-- KEYS[1]    the workers' sorted set: member = worker id, score = expiry (ms, server clock)
-- KEYS[1+i]  owner key i (a string "<fencing token> <worker id>" with a TTL)
-- ARGV[1]    worker id   ARGV[2]  ttl (ms)   ARGV[3]  "beat" or "leave"
-- ARGV[3+i]  the value owner key i must still hold
-- Returns {live workers (ids, expired ones dropped), statuses: 1 renewed, 0 lost,
--          ms until the next other worker's heartbeat expires, or -1}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == 'leave' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + 1)
end
local statuses = {}
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[2 + i] then
    redis.call('PEXPIRE', KEYS[i], ttl)
    statuses[i - 1] = 1
  else
    statuses[i - 1] = 0
  end
end
local next_expiry = -1
local first = redis.call('ZRANGE', KEYS[1], 0, 1, 'WITHSCORES')
for j = 1, #first, 2 do
  if first[j] ~= ARGV[1] then
    next_expiry = tonumber(first[j + 1]) - now
    break
  end
end
return {redis.call('ZRANGE', KEYS[1], 0, -1), statuses, next_expiry}
