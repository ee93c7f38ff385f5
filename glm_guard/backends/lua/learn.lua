-- Give a lease back and let the call's answer teach the learned concurrency limit, atomically,
-- so that one 1302 makes one cut however many processes see it (the rule and its reasons are
-- in backends/_learned.py; tests/test_learned.py checks this script against it).
-- KEYS[1] leases   KEYS[2] learned limit (HASH: limit epoch busy streak ceiling misses peak)
-- ARGV[1] token   ARGV[2] channel   ARGV[3] '1' succeeded / '2' limited
-- ARGV[4] the epoch the call was admitted in   ARGV[5] "min max start"
-- ARGV[6] the calls running when it was admitted, itself included   ARGV[7] (tests only) now ms
-- Returns {removed, limit, changed, epoch}.
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed > 0 then
  redis.call('PUBLISH', ARGV[2], '1')
end
local lo, hi, first = string.match(ARGV[5], '^(%d+) (%d+) (%d+)$')
lo, hi, first = tonumber(lo), tonumber(hi), tonumber(first)

-- Whatever is stored is read defensively: a field that is not a whole number in its range
-- reads as its starting value, so planted data can neither crash this nor lift the bounds.
local f = redis.call('HMGET', KEYS[2], 'limit', 'epoch', 'busy', 'streak', 'ceiling', 'misses', 'peak')
local function whole(value, low, high, default)
  local n = tonumber(value)
  if not n or n ~= math.floor(n) or n < low or n > high then return default end
  return n
end
local limit = math.min(math.max(whole(f[1], 1, 1e9, first), lo), hi)
local epoch = whole(f[2], 0, 1e15, 0)
local busy = whole(f[3], 0, 1, 0)
local streak = whole(f[4], 0, 1e15, 0)
local ceiling = whole(f[5], 0, 1e9, 0)
local misses = whole(f[6], 0, 64, 0)
local peak = whole(f[7], 0, 1e9, 0)
local called_in = tonumber(ARGV[4])
local old = limit

if called_in ~= epoch then
  return {removed, limit, 0, epoch}  -- admitted before the last cut: that congestion was answered
end
if ARGV[3] == '2' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if ARGV[7] then now = tonumber(ARGV[7]) end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)  -- leases of holders that died run nothing
  -- What the provider held when it refused: the calls running at this one's admission that
  -- still run (those admitted after it, in a burst, were refused too).
  local others = math.min(redis.call('ZCARD', KEYS[1]), math.max(tonumber(ARGV[6]) - 1, 0))
  local cut
  if peak > 0 and old > peak then
    cut = old - 1  -- a failed probe above the best level that held: back to it
  else
    cut = math.floor(old * 0.9)
    if ceiling == 0 and old < peak then peak = 0 end  -- a climb back to the peak overshot
  end
  if ceiling == old then misses = math.min(misses + 1, 64) else ceiling, misses = old, 1 end
  limit = math.max(lo, math.min(cut, others))
  epoch, streak, busy = epoch + 1, 0, 0
else
  if busy == 0 then
    return {removed, limit, 0, epoch}  -- the limit was not in use: success says nothing about more
  end
  streak = streak + 1
  if streak >= limit then  -- the limit held for a call latency at full use
    peak = math.max(peak, limit)
    if ceiling > 0 and limit >= ceiling then
      ceiling, misses = 0, 0  -- the capacity is back at the level that failed
    end
  end
  local need
  if epoch == 0 and ceiling == 0 then
    need = 1  -- slow start: no 1302 seen yet
  elseif ceiling == 0 and limit < peak then
    need = 1  -- a probe found the capacity back: climb to the level that held before
  elseif ceiling == 0 or limit + 1 < ceiling then
    need = limit
  elseif limit < peak and misses <= 24 then
    need = math.min(2 * limit, math.max(limit, 128))  -- peak hours end: look every two latencies
  else
    need = math.min(limit * 2 ^ math.min(misses, 16), math.max(limit, 128))
  end
  if streak >= need and limit < hi then
    limit, streak, busy = limit + 1, 0, 0
  end
end
redis.call('HSET', KEYS[2], 'limit', limit, 'epoch', epoch, 'busy', busy, 'streak', streak,
  'ceiling', ceiling, 'misses', misses, 'peak', peak)
redis.call('PEXPIRE', KEYS[2], 86400000)
local changed = 0
if limit ~= old then changed = 1 end
return {removed, limit, changed, epoch}
