-- A caller whose start was reserved wakes up: is a cooldown now in force?  If so it gives
-- its reservation (and lease) back and returns the ms left, to queue again after the pause.
-- KEYS[1] starts  KEYS[2] leases  KEYS[3] cooldown   ARGV[1] token.  Returns 0 to go ahead.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = tonumber(redis.call('GET', KEYS[3]) or '0')
if until_ms <= now then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return until_ms - now
