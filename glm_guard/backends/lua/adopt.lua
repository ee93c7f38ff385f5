-- What a process did while Redis was away joins the shared state, before its next admission.
-- Its calls still running get leases as if admitted here (renewed and given back like any
-- other), and its starts of the last window join the window, dated by their age: the counts
-- may now be above the limits for a while, which only holds new admissions back.
-- KEYS[1] starts   KEYS[2] leases
-- ARGV[1] lease ms   ARGV[2] calls (0: no rate limit)   ARGV[3] window ms
-- ARGV[4] n, then n tokens (leases), then pairs of (member, age ms) for the starts.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, calls, window, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if n > 0 then
  for i = 5, 4 + n do
    redis.call('ZADD', KEYS[2], now + lease, ARGV[i])
  end
  redis.call('PEXPIRE', KEYS[2], lease * 2 + 1000)
end
if calls > 0 and #ARGV > 4 + n then
  for i = 5 + n, #ARGV, 2 do
    redis.call('ZADD', KEYS[1], now - tonumber(ARGV[i + 1]), ARGV[i])
  end
  -- Only the last `calls` starts can matter (see acquire.lua); keep the newest and their key.
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(calls + 1))
  local newest = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], math.max(tonumber(newest[2]) - now, 0) + window + 1000)
end
return n
