-- Pause a key until now + ARGV[1] ms (server time).  A longer pause extends the stored
-- deadline; a shorter one never shortens it.  KEYS[1] cooldown.  Returns the deadline.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if deadline > current then
  redis.call('SET', KEYS[1], deadline, 'PXAT', deadline)
  return deadline
end
return current
