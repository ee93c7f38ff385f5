-- Extend the leases of this process's live holders (tokens in ARGV[2..]) to now + ARGV[1] ms.
-- KEYS[1] leases.  A lease found expired or missing is put back too: its holder is still
-- running (frozen past its lease, or Redis lost its data), so its call is still in flight.
-- Returns the tokens that were missing, for the caller to report (or, if their holder gave
-- them back meanwhile, to release again).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local missing = {}
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not score or tonumber(score) <= now then
    missing[#missing + 1] = ARGV[i]
  end
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], lease * 2 + 1000)
return missing
