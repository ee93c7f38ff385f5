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
if KEYS[8] then redis.call('ZREM', KEYS[8], ARGV[1]) end  -- its place in a burst cap's log
if KEYS[7] then  -- its token reservation too (KEYS[6], KEYS[7]: acquire.lua's)
  local size = tonumber(redis.call('HGET', KEYS[7], ARGV[1]) or '')
  if size then
    redis.call('HDEL', KEYS[7], ARGV[1])
    redis.call('ZREM', KEYS[6], ARGV[1])
    if size > 0 then redis.call('HINCRBY', KEYS[7], 'total', 0 - size) end
  end
end
if until_ms > now then
  return until_ms - now
end
return 0
