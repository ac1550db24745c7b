-- Give owner leases back, each only if it still holds the value this worker set.
-- KEYS[i]  owner key i   ARGV[i]  the value "<fencing token> <worker id>" it must hold
-- Returns the number of owner keys deleted.
local n = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('DEL', KEYS[i])
    n = n + 1
  end
end
return n
