-- A caller whose start was reserved wakes up.  It gives its reservation (and lease) back
-- when a cooldown is now in force, or when it woke too late (ARGV[2] = '1'): a start well
-- after its reserved moment could share a window with the starts reserved after it.
-- KEYS[1] starts  KEYS[2] leases  KEYS[3] cooldown   ARGV[1] token, ARGV[2] late ('1'/'0').
-- Returns -1 to go ahead, else the ms of cooldown left (0: none) after giving the slot back.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = tonumber(redis.call('GET', KEYS[3]) or '0')
if until_ms <= now and ARGV[2] ~= '1' then
  return -1
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if until_ms > now then
  return until_ms - now
end
return 0
