-- What a process did while Redis was away joins the shared state, before its next admission.
-- Its calls still running get leases as if admitted here (renewed and given back like any
-- other), its starts of the last window join the window, and its token reservations join the
-- budget, dated by their age: the counts may now be above the limits for a while, which only
-- holds new admissions back.
-- KEYS[1] starts   KEYS[2] leases   KEYS[3] token reservations   KEYS[4] their sizes (see acquire.lua)
-- ARGV[1] lease ms   ARGV[2] calls (0: no rate limit)   ARGV[3] window ms   ARGV[4] n   ARGV[5] m
-- ARGV[6] token window ms (0: no budget); then n tokens (leases), then m pairs of (member, age
-- ms) for the starts, then triples of (member, age ms, tokens) for the token reservations.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, calls, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local n, m, twindow = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if n > 0 then
  for i = 7, 6 + n do
    redis.call('ZADD', KEYS[2], now + lease, ARGV[i])
  end
  redis.call('PEXPIRE', KEYS[2], lease * 2 + 1000)
end
local first = 7 + n
if calls > 0 and m > 0 then
  for i = first, first + 2 * m - 1, 2 do
    redis.call('ZADD', KEYS[1], now - tonumber(ARGV[i + 1]), ARGV[i])
  end
  -- Only the last `calls` starts can matter (see acquire.lua); keep the newest and their key.
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(calls + 1))
  local newest = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], math.max(tonumber(newest[2]) - now, 0) + window + 1000)
end
first = first + 2 * m
if twindow > 0 and #ARGV >= first + 2 then
  local added = 0
  for i = first, #ARGV - 2, 3 do
    local age, tokens = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    if age < twindow and tokens > 0 then  -- older: it left the window, and nothing counts it
      redis.call('ZADD', KEYS[3], now - age, ARGV[i])
      redis.call('HSET', KEYS[4], ARGV[i], tokens)
      added = added + tokens
    end
  end
  if added > 0 then
    redis.call('HINCRBY', KEYS[4], 'total', added)
    local keep = twindow + 1000  -- the newest is at most now: both keys outlive every reservation
    if redis.call('PTTL', KEYS[3]) < keep then redis.call('PEXPIRE', KEYS[3], keep) end
    if redis.call('PTTL', KEYS[4]) < keep then redis.call('PEXPIRE', KEYS[4], keep) end
  end
end
return n
