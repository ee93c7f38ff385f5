-- Give up a claim on computing a cache entry, only if it is still ours: after our claim
-- expired another process may hold it.  KEYS[1] the fill key  ARGV[1] our token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
