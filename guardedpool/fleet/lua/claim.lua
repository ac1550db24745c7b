-- Claim owner leases on keys, each with a fencing token that only ever grows.
-- KEYS[2i-1]  owner key i (a string "<fencing token> <worker id>" with a TTL)
-- KEYS[2i]    fencing counter of key i (never expires: the token must grow for ever)
-- ARGV[1]     worker id   ARGV[2]  ttl (ms)
-- Returns, per key, {1, fencing token} when claimed, or {0, ms until the current
-- owner's lease expires}: another worker holds it until then.
-- A key this worker already holds is claimed afresh with a new token: a holder that
-- thought its lease lost must never carry on under the old token.
local ttl = tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS / 2 do
  local owner, fence = KEYS[2 * i - 1], KEYS[2 * i]
  local current = redis.call('GET', owner)
  local mine = false
  if current then
    local space = string.find(current, ' ', 1, true)
    mine = space ~= nil and string.sub(current, space + 1) == ARGV[1]
  end
  if current and not mine then
    out[i] = {0, redis.call('PTTL', owner)}
  else
    local token = redis.call('INCR', fence)
    redis.call('SET', owner, token .. ' ' .. ARGV[1], 'PX', ttl)
    out[i] = {1, token}
  end
end
return out
