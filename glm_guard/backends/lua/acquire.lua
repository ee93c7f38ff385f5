-- One admission decision for one key, atomically, on the server's clock.
-- KEYS[1] starts (ZSET: token -> start ms)   KEYS[2] leases (ZSET: token -> expiry ms)
-- KEYS[3] cooldown (string: deadline ms)   KEYS[4] learned limit (HASH, see learn.lua)
-- KEYS[5] pause (string: "reason until_ms probe_every_ms since_ms", see pause.lua)
-- KEYS[6] token reservations (ZSET: token -> start ms)   KEYS[7] their sizes (HASH: token ->
-- tokens, and 'total': their sum); read only with ARGV[4].   KEYS[8] burst starts (ZSET:
-- token -> start ms); read only with ARGV[5].
-- ARGV[3] (tests only): a virtual "now" in ms, so the same vectors can check this script and
-- the local algorithm against one oracle.
-- ARGV[1]: "calls period_ms concurrency lease_ms max_wait_ms [min max start]" (calls or
--          concurrency 0 = no such limit; max_wait_ms -1 = no limit; with the last three the
--          concurrency limit is the learned one, kept in [min, max], `start` until one is
--          learned), one argument the client packs once per policy.
--          ARGV[2]: a token unique to this attempt.
-- ARGV[4] (optional): "tokens reserve window_ms", a token budget: this call reserves `reserve`
--          of the `tokens` that may start in any window (see the token budget part below).
-- ARGV[5] (optional): "starts window_ms", a burst cap: at most `starts` in any sub-window.
-- Returns {1} when admitted now (the usual reply, kept short); {2, wait_ms} when admitted
-- with a start reserved wait_ms from now (the caller sleeps, then starts without asking
-- again: one round trip per admission even under contention).  Under a learned limit, or
-- for the probe at the end of a pause, the long form {1 or 2, wait_ms, epoch, limit, since,
-- running} (-1 where it does not apply): the epoch the call belongs to, the limit and the calls
-- running with this one counted (see learn.lua), and the start of the pause the call probes.  Else {0, wait_ms, reason} with reason
-- 1 = cooldown, 2 = rate window (the wait would exceed max_wait), 3 = concurrency, 5 = token
-- budget (wait_ms: until enough reservations leave the window; a settle may free some sooner), and
-- {0, wait_ms, 4, what} while a pause refuses every call (`what` paused it).
-- Limits arrive with every call, so a limit can change at run time and further limits
-- (tokens per minute) can join the same atomic check.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] and ARGV[3] ~= '' then now = tonumber(ARGV[3]) end  -- a virtual clock, for the property tests only
local c, p, n, l, w, learning = string.match(ARGV[1], '^(%d+) (%d+) (%d+) (%d+) (-?%d+)(.*)$')
local calls, period, concurrency = tonumber(c), tonumber(p), tonumber(n)
local lease, max_wait = tonumber(l), tonumber(w)
local token = ARGV[2]

-- A learned limit is read here, in the same step that enforces it, so every process obeys a
-- change at its next admission.  What another program may have planted under the key is
-- never trusted: anything but a whole number within the bounds reads as the start.
local epoch = nil
if learning ~= '' then
  local lo, hi, first = string.match(learning, '^ (%d+) (%d+) (%d+)$')
  lo, hi, first = tonumber(lo), tonumber(hi), tonumber(first)
  local state = redis.call('HMGET', KEYS[4], 'limit', 'epoch')
  local limit = tonumber(state[1])
  if not limit or limit ~= math.floor(limit) or limit < 1 then limit = first end
  limit = math.min(math.max(limit, lo), hi)
  epoch = tonumber(state[2])
  if not epoch or epoch < 0 or epoch ~= math.floor(epoch) then epoch = 0 end
  concurrency = limit
end
local function in_use()  -- the learned limit was reached: growth may count the next successes
  redis.call('HSET', KEYS[4], 'busy', 1)
  redis.call('PEXPIRE', KEYS[4], 86400000)
end

-- A pause refuses at once; once it has run out, this caller may be the probe (taken below,
-- only if it is admitted).  A value not in the pause's form is not a pause.
local probe = nil
local paused = redis.call('GET', KEYS[5])
if paused then
  local what, ends, every, since = string.match(paused, '^([%w_:]+) (%d+) (%d+) (%d+)$')
  if what then
    if tonumber(ends) > now then return {0, tonumber(ends) - now, 4, what} end
    probe = {what, tonumber(every), since}
  end
end

local until_ms = tonumber(redis.call('GET', KEYS[3]) or '0')
if until_ms > now then
  return {0, until_ms - now, 1}
end

-- Starts (past and reserved) are kept in order; a new one goes after the last (FIFO), and
-- only once the calls-th most recent start has left the window (start - period, start].
-- Only the last `calls` starts can matter, so the set is trimmed by rank, never scanned.
-- While the window is not full no reservation can lie in the future (a reservation is
-- only made when `calls` starts fill its own window), so the last start matters only then.
-- Before a start is added the set holds at most `calls` members, so it needs trimming back
-- to `calls` only when the window was already at capacity (the calls-th start exists).
local start = now
local full = false
if calls > 0 then
  local nth = redis.call('ZREVRANGE', KEYS[1], calls - 1, calls - 1, 'WITHSCORES')
  if nth[2] then
    full = true
    if tonumber(nth[2]) + period > now then
      start = tonumber(nth[2]) + period
      local last = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
      if tonumber(last[2]) > start then start = tonumber(last[2]) end
    end
  end
  if max_wait >= 0 and start - now > max_wait then
    return {0, start - now, 2}
  end
end

-- A burst cap keeps a log of its own.  Its reservations may lie in the future while the rate
-- window is not full, so a start goes after the last one in it (FIFO across processes), then
-- waits until the starts-th most recent has left the sub-window.  A later start never breaks
-- the rate window checked above: every start there is at or before it.
local burst, bwindow = nil, 0
if ARGV[5] and ARGV[5] ~= '' then
  local bn, bw = string.match(ARGV[5], '^(%d+) (%d+)$')
  burst, bwindow = tonumber(bn), tonumber(bw)
  local last = redis.call('ZREVRANGE', KEYS[8], 0, 0, 'WITHSCORES')
  if last[2] and tonumber(last[2]) > start then start = tonumber(last[2]) end
  local nth = redis.call('ZREVRANGE', KEYS[8], burst - 1, burst - 1, 'WITHSCORES')
  if nth[2] and tonumber(nth[2]) + bwindow > start then start = tonumber(nth[2]) + bwindow end
  if max_wait >= 0 and start - now > max_wait then
    return {0, start - now, 2}
  end
end

-- Expired leases (of holders that died) only ever make the count larger, so they are swept
-- only when the count reaches the limit: the set never holds more than `concurrency` + 1.
local held = -2
if concurrency > 0 then
  held = redis.call('ZCARD', KEYS[2])
  if held >= concurrency then
    held = held - redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
    if held >= concurrency then
      if epoch then in_use() end
      local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
      return {0, tonumber(first[2]) - now, 3}
    end
  end
  if epoch and held + 1 >= concurrency then in_use() end
end

-- The token budget.  Every reservation that started after now - window counts, reserved
-- (future) starts included, so a start admitted now keeps every window it lies in within the
-- budget: any reservation sharing a window with it and decided earlier was counted here.
-- Reservations that left the window are dropped in batches (their sizes leave 'total').
local budget, reserve, twindow = nil, 0, 0
if ARGV[4] and ARGV[4] ~= '' then
  local b, r, tw = string.match(ARGV[4], '^(%d+) (%d+) (%d+)$')
  budget, reserve, twindow = tonumber(b), tonumber(r), tonumber(tw)
  forget_reservations_before(KEYS[6], KEYS[7], now - twindow)  -- see _reservations.lua
  local excess = tonumber(redis.call('HGET', KEYS[7], 'total') or '0') + reserve - budget
  if excess > 0 then  -- wait until the oldest reservations, leaving first, free enough
    local wait, seen = twindow, 0
    while excess > 0 do
      local batch = redis.call('ZRANGE', KEYS[6], seen, seen + 499, 'WITHSCORES')
      if #batch == 0 then break end
      local members = {}
      for i = 1, #batch, 2 do members[#members + 1] = batch[i] end
      local sizes = redis.call('HMGET', KEYS[7], unpack(members))
      for i = 1, #members do
        excess = excess - (tonumber(sizes[i]) or 0)
        if excess <= 0 then wait = tonumber(batch[i * 2]) + twindow - now break end
      end
      seen = seen + #members
    end
    return {0, math.max(wait, 1), 5}
  end
end

if budget then
  redis.call('ZADD', KEYS[6], start, token)
  redis.call('HSET', KEYS[7], token, reserve)
  redis.call('HINCRBY', KEYS[7], 'total', reserve)
  local keep = start - now + twindow + 1000  -- both keys go together, never before a reservation counts
  if redis.call('PTTL', KEYS[6]) < keep then
    redis.call('PEXPIRE', KEYS[6], keep)
    redis.call('PEXPIRE', KEYS[7], keep)
  end
end
if burst then
  redis.call('ZADD', KEYS[8], start, token)
  redis.call('ZREMRANGEBYRANK', KEYS[8], 0, -(burst + 1))
  redis.call('PEXPIRE', KEYS[8], start - now + bwindow + 1000)
end
if calls > 0 then
  redis.call('ZADD', KEYS[1], start, token)
  if full then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(calls + 1)) end
  redis.call('PEXPIRE', KEYS[1], start - now + period + 1000)
end
if concurrency > 0 then
  -- A reserved start holds its lease from now, so the slot is there when it wakes.
  redis.call('ZADD', KEYS[2], start + lease, token)
  redis.call('PEXPIRE', KEYS[2], start - now + lease * 2 + 1000)
end
if probe then  -- the others keep failing for one more interval while this call finds out
  local ends = start + probe[2]
  redis.call('SET', KEYS[5], probe[1] .. ' ' .. ends .. ' ' .. probe[2] .. ' ' .. probe[3], 'PXAT', ends + 60000)
end
local code = 1
if start > now then code = 2 end
if epoch or probe then
  return {code, start - now, epoch or -1, epoch and concurrency or -1, probe and probe[3] or -1, held + 1}
end
if code == 2 then return {2, start - now} end
return {1}
