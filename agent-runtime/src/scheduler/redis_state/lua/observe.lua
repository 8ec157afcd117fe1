-- Tightens buckets to what the provider reported as remaining (never loosens: the provider's
-- reading is older than the reservations this quota has made since).
--
-- ARGV: start_empty (0/1), n, then n x (name, cap, period_ms, remaining)
-- Returns {now_us}
local empty = ARGV[1] == '1'
local specs = read_specs(3, tonumber(ARGV[2]), 4)
local now_us, now_ms = server_now()
local ttl = 0
for _, s in ipairs(specs) do
  local level, rate = load_bucket(KEYS[1], s.name, s.cap, s.period, now_ms, empty)
  if s.amount < level then
    level = s.amount
    store_bucket(KEYS[1], s.name, level, now_ms)
  end
  ttl = math.max(ttl, time_to_full(s.cap, rate, level))
end
if ttl > 0 then
  keep_for(KEYS[1], ttl)
end
return {now_us}
