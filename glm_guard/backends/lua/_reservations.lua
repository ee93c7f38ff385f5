-- Shared by the scripts that read a token budget (acquire.lua, settle.lua), put before them
-- by glm_guard.backends._redis._scripts.
-- Drops the reservations that started at or before `horizon` (ms), in batches, and takes
-- their sizes out of the 'total' field: only those in the window count against the budget.
-- `reservations`: ZSET token -> start ms; `sizes`: HASH token -> tokens, and 'total'.
local function forget_reservations_before(reservations, sizes, horizon)
  while true do
    local gone = redis.call('ZRANGEBYSCORE', reservations, '-inf', horizon, 'LIMIT', 0, 500)
    if #gone == 0 then return end
    local amounts = redis.call('HMGET', sizes, unpack(gone))
    local freed = 0
    for i = 1, #gone do freed = freed + (tonumber(amounts[i]) or 0) end
    redis.call('HDEL', sizes, unpack(gone))
    redis.call('ZREM', reservations, unpack(gone))
    if freed > 0 then redis.call('HINCRBY', sizes, 'total', 0 - freed) end
  end
end
