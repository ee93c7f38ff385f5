-- A call that reserved tokens ended: give its lease back (if it holds one) and settle its
-- reservation to what it used, in one step.  Waiting processes hear of freed slots and tokens.
-- KEYS[1] leases   KEYS[2] token reservations   KEYS[3] their sizes (see acquire.lua)
-- ARGV[1] token   ARGV[2] channel   ARGV[3] tokens used (0: the call failed, all back; -1: its
-- answer said nothing, the estimate stays).  Returns the tokens freed (negative: added).
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
local used = tonumber(ARGV[3])
local freed = 0
local size = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '')
if size and used >= 0 then  -- gone: it left the window already, and nothing counts it
  freed = size - used
  if freed ~= 0 then redis.call('HINCRBY', KEYS[3], 'total', used - size) end  -- never "-0": not an integer to Redis
  if used > 0 then
    redis.call('HSET', KEYS[3], ARGV[1], used)
  else
    redis.call('HDEL', KEYS[3], ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
  end
end
if removed > 0 or freed > 0 then
  redis.call('PUBLISH', ARGV[2], '1')
end
return freed
