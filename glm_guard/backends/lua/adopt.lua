-- Calls a process admitted while Redis was away, still running, join the shared count: each
-- gets a lease as if admitted here, renewed and given back like any other.  The count may now
-- be above the limit for a while: those calls are in flight, so no new one is admitted.
-- KEYS[1] leases   ARGV[1] lease ms   ARGV[2..] tokens
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], lease * 2 + 1000)
return #ARGV - 1
