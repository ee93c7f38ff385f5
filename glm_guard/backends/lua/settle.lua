-- A call that reserved tokens ended: give its lease back (if it holds one) and settle its
-- reservation to what it used, in one step.  Waiting processes hear of freed slots and tokens.
-- KEYS[1] leases   KEYS[2] token reservations   KEYS[3] their sizes (see acquire.lua)
-- ARGV[1] token   ARGV[2] channel   ARGV[3] tokens used (0: the call failed, all back; -1: its
-- answer said nothing, the estimate stays).  Returns the tokens freed (negative: added).
-- ARGV[4..7] (optional): "budget window_ms", the provider's tokens left, ms to their reset, and
-- a member name: what the provider said is left lowers the budget until the reset (below).
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

-- The provider's count may hold less than the budget has left in the window (tokens spent
-- outside the guard): one reservation of the difference, dated so that it leaves the window
-- at the provider's reset, lowers the budget to what the provider has left until then.  Those
-- already made count in the comparison, so reports from many processes never stack.
local budget, window = string.match(ARGV[4] or '', '^(%d+) (%d+)$')
local left, reset = tonumber(ARGV[5] or ''), tonumber(ARGV[6] or '')
if budget and left and reset and ARGV[7] and left >= 0 and reset > 0 then
  budget, window = tonumber(budget), tonumber(window)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  forget_reservations_before(KEYS[2], KEYS[3], now - window)  -- those that left no longer count
  local total = tonumber(redis.call('HGET', KEYS[3], 'total') or '0') or 0
  local excess = math.floor(budget - total - left)
  reset = math.min(reset, window)  -- at most one window, as locally; a later reset is heard again
  if excess > 0 then
    redis.call('ZADD', KEYS[2], now + reset - window, ARGV[7])
    redis.call('HSET', KEYS[3], ARGV[7], excess)
    redis.call('HINCRBY', KEYS[3], 'total', excess)
    local keep = reset + 1000
    if redis.call('PTTL', KEYS[2]) < keep then redis.call('PEXPIRE', KEYS[2], keep) end
    if redis.call('PTTL', KEYS[3]) < keep then redis.call('PEXPIRE', KEYS[3], keep) end
  end
end
return freed
