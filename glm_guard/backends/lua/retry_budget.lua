-- May one more retry of a key go?  Its calls and retries live in one hash of per-second
-- buckets on the server's clock: field "d<second>" counts logical calls, "r<second>" retries.
-- KEYS[1] the hash.  ARGV: per mille ratio, floor (retries per window), window (whole s),
-- seconds kept (the longest window), then pairs (age in whole seconds, calls) of this
-- process's calls not yet sent, which land in the bucket of their own second.
-- A retry goes while (retries + 1) * 1000 <= max(ratio * calls, floor * 1000) over the window.
-- Nothing read is trusted: a field or value that is not ours counts as 0 and is deleted,
-- a key of another type is replaced.  Returns {allowed (0/1), calls, retries}.
local t = redis.call('TIME')
local now = tonumber(t[1])
local per_mille = tonumber(ARGV[1])
local floor = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local keep = tonumber(ARGV[4])
local key = KEYS[1]

if redis.call('TYPE', key).ok ~= 'hash' then
  redis.call('DEL', key)
end

local function count(value)
  if type(value) ~= 'string' or #value > 15 or not string.match(value, '^%d+$') then
    return nil
  end
  return tonumber(value)
end

local buckets = {d = {}, r = {}}
local stale = {}
local flat = redis.call('HGETALL', key)
for i = 1, #flat, 2 do
  local field = flat[i]
  local kind, digits = string.match(field, '^([dr])(%d+)$')
  local second = digits and #digits <= 12 and tonumber(digits)
  local n = count(flat[i + 1])
  if second and n and second <= now and second > now - keep then
    buckets[kind][second] = n
  else
    stale[#stale + 1] = field
  end
end

local changed = {}
for i = 5, #ARGV - 1, 2 do
  local age = count(ARGV[i])
  local n = count(ARGV[i + 1])
  if age and n and age < keep and n > 0 then
    local second = now - age
    buckets.d[second] = (buckets.d[second] or 0) + n
    changed['d' .. second] = buckets.d[second]
  end
end

local calls, retries = 0, 0
for second, n in pairs(buckets.d) do
  if second > now - window then calls = calls + n end
end
for second, n in pairs(buckets.r) do
  if second > now - window then retries = retries + n end
end

local allowed = 0
if (retries + 1) * 1000 <= math.max(per_mille * calls, floor * 1000) then
  allowed = 1
  retries = retries + 1
  buckets.r[now] = (buckets.r[now] or 0) + 1
  changed['r' .. now] = buckets.r[now]
end

for i = 1, #stale, 1000 do
  redis.call('HDEL', key, unpack(stale, i, math.min(i + 999, #stale)))
end
for field, n in pairs(changed) do
  redis.call('HSET', key, field, n)
end
redis.call('EXPIRE', key, keep + 1)
return {allowed, calls, retries}
