-- Reads a quota without changing it: for metrics and tests.
--
-- ARGV: n, then n x (name, cap, period_ms, start_empty 0/1, kind)
-- Returns {now_us, in_flight (live leases), pause_remaining_us, level_1, ..., level_n}; levels are
-- strings because Redis truncates Lua numbers to integers.
local specs = read_specs(2, tonumber(ARGV[1]), 5)
local now_us, now_ms = server_now()
local reply = {now_us, redis.call('ZCOUNT', KEYS[2], '(' .. string.format('%.3f', now_ms), '+inf'), 0}
local paused = redis.call('GET', KEYS[3])
if paused and tonumber(paused) > now_ms then
  reply[3] = math.ceil((tonumber(paused) - now_ms) * 1000)
end
for _, s in ipairs(specs) do
  load_meter(KEYS[1], s, now_ms, s.amount == 1)
  reply[#reply + 1] = string.format('%.6f', s.level)
end
return reply
