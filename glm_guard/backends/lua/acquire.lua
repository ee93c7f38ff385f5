-- One admission decision for one key, atomically, on the server's clock.
-- KEYS[1] starts (ZSET: token -> start ms)   KEYS[2] leases (ZSET: token -> expiry ms)
-- KEYS[3] cooldown (string: deadline ms)
-- ARGV: calls (0 = no rate limit), period_ms, concurrency (0 = none), lease_ms, token
-- Returns {1, 0} when admitted, else {0, wait_ms, reason} with reason
-- 1 = cooldown, 2 = rate window, 3 = concurrency.
-- Limits arrive with every call, so a limit can change at run time and further limits
-- (tokens per minute) can join the same atomic check.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local calls = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local concurrency = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local token = ARGV[5]

local until_ms = tonumber(redis.call('GET', KEYS[3]) or '0')
if until_ms > now then
  return {0, until_ms - now, 1}
end

if calls > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
  local used = redis.call('ZCARD', KEYS[1])
  if used >= calls then
    -- The calls-th most recent start must leave the window (now - period, now].
    local nth = redis.call('ZREVRANGE', KEYS[1], calls - 1, calls - 1, 'WITHSCORES')
    local wait = tonumber(nth[2]) + period - now
    if wait < 1 then wait = 1 end
    return {0, wait, 2}
  end
end

if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= concurrency then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {0, tonumber(first[2]) - now, 3}
  end
end

if calls > 0 then
  redis.call('ZADD', KEYS[1], now, token)
  redis.call('PEXPIRE', KEYS[1], period + 1000)
end
if concurrency > 0 then
  redis.call('ZADD', KEYS[2], now + lease, token)
  redis.call('PEXPIRE', KEYS[2], lease * 2 + 1000)
end
return {1, 0}
