-- Gives up `by_ms` of refill in each continuous bucket, possibly into debt (the cold-start shift:
-- the provider's bucket began refilling only when the first request arrived, this one when it
-- was granted). Windows have no refill to give up and are left alone.
--
-- ARGV: start (0/1/2, common.lua's start_mode), by_ms, n, then n x (name, cap, period_ms, unused, kind)
-- Returns {now_us}
local empty, lost = start_mode(ARGV[1], KEYS[1])
local by = tonumber(ARGV[2])
local specs = read_specs(4, tonumber(ARGV[3]), 5)
local now_us, now_ms = server_now()
local ttl = 0
for _, s in ipairs(specs) do
  if s.kind == 'b' then
    load_meter(KEYS[1], s, now_ms, empty, lost)
    meter_take(KEYS[1], s, s.rate * by, now_ms)
    ttl = math.max(ttl, meter_ttl(s))
  end
end
if ttl > 0 then
  keep_for(KEYS[1], ttl)
end
return {now_us}
