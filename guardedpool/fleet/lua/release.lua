-- Give one budget lease back.
-- KEYS[1]  the key's sorted set   ARGV[1]  lease token
-- Returns 1 if the lease was there, 0 if it had already expired or been released.
return redis.call('ZREM', KEYS[1], ARGV[1])
