-- Reconciles one call: releases its in-flight lease and adjusts buckets by the difference between
-- what was reserved and what was used (positive = refund, capped at capacity; negative = extra
-- charge, which may leave a bucket in debt that later callers wait out).
--
-- ARGV: lease_id, start (0/1/2, common.lua's start_mode), n, then n x (name, cap, period_ms, delta, kind)
-- Returns {released (1 when the lease was still held, 0 when it had expired), now_us}
local empty, lost = start_mode(ARGV[2], KEYS[1])
local specs = read_specs(4, tonumber(ARGV[3]), 5)
local now_us, now_ms = server_now()

local released = redis.call('ZREM', KEYS[2], ARGV[1])
local ttl = 0
for _, s in ipairs(specs) do
  load_meter(KEYS[1], s, now_ms, empty, lost)
  if s.fresh then
    ttl = math.max(ttl, store_fresh(KEYS[1], s, now_ms))
  end
  meter_take(KEYS[1], s, -s.amount, now_ms)
  ttl = math.max(ttl, meter_ttl(s))
end
if #specs > 0 then
  keep_for(KEYS[1], ttl)
end
return {released, now_us}
