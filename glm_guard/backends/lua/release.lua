-- Give a concurrency lease back and tell waiting processes a slot is free.
-- KEYS[1] leases   ARGV[1] token   ARGV[2] channel
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed > 0 then
  redis.call('PUBLISH', ARGV[2], '1')
end
return removed
