-- Pause a key: every admission is refused at once until now + ARGV[2] ms, then one call per
-- ARGV[3] ms goes through as a probe (acquire.lua) until one succeeds (unpause.lua).
-- KEYS[1] pause   ARGV[1] reason (letters, digits, _ and :)   ARGV[2] ms   ARGV[3] probe interval ms
-- A pause never shortens a longer one in force.  Returns the pause's start (its identity).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ends = now + tonumber(ARGV[2])
local current = redis.call('GET', KEYS[1])
if current then
  local what, until_ms, every, since = string.match(current, '^([%w_:]+) (%d+) (%d+) (%d+)$')
  if what and tonumber(until_ms) >= ends then return since end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ends .. ' ' .. ARGV[3] .. ' ' .. now, 'PXAT', ends + tonumber(ARGV[3]) + 60000)
return now
