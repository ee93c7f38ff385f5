-- A probe succeeded: end the pause it probed (ARGV[1] = its start), not a newer one.
-- KEYS[1] pause.  Returns 1 if the pause ended.
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local since = string.match(current, '^[%w_:]+ %d+ %d+ (%d+)$')
if since == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
