-- Extends a live lease (its holder is still working). A lease past its expiry is gone for good:
-- its slot may already be someone else's.
--
-- ARGV: lease_id, lease_ttl_ms
-- Returns {renewed (1 or 0), now_us}
local now_us, now_ms = server_now()
local ttl = tonumber(ARGV[2])
prune_leases(KEYS[2], now_ms)
local renewed = redis.call('ZADD', KEYS[2], 'XX', 'CH', string.format('%.3f', now_ms + ttl), ARGV[1])
if renewed > 0 then
  keep_for(KEYS[2], ttl)
end
return {renewed, now_us}
