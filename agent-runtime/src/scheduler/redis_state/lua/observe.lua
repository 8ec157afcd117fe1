-- Tightens buckets to what the provider reported as remaining (never loosens: the provider's
-- reading is older than the reservations this quota has made since).
--
-- ARGV: start (0/1/2, common.lua's start_mode), n, then n x (name, cap, period_ms, remaining, kind)
-- Returns {now_us}
local empty, lost = start_mode(ARGV[1], KEYS[1])
local specs = read_specs(3, tonumber(ARGV[2]), 5)
local now_us, now_ms = server_now()
local ttl = 0
for _, s in ipairs(specs) do
  load_meter(KEYS[1], s, now_ms, empty, lost)
  if s.fresh then
    ttl = math.max(ttl, store_fresh(KEYS[1], s, now_ms))
  end
  if s.amount < s.level then
    meter_take(KEYS[1], s, s.level - s.amount, now_ms)
    if in_band(s, now_ms) then
      -- A report this close to the boundary may describe the provider's next window: the
      -- whole count stands for that one too.
      s.carry = s.used
      redis.call('HSET', KEYS[1], s.name .. ':c', string.format('%.6f', s.carry))
    end
  end
  ttl = math.max(ttl, meter_ttl(s))
end
if ttl > 0 then
  keep_for(KEYS[1], ttl)
end
return {now_us}
