-- Pauses the whole quota (every process) until now + duration, never shortening a longer pause
-- that another process already set.
--
-- ARGV: duration_ms
-- Returns {now_us, remaining_us} (the pause in force after this call)
local now_us, now_ms = server_now()
local until_ms = now_ms + tonumber(ARGV[1])
local current = redis.call('GET', KEYS[3])
if current and tonumber(current) >= until_ms then
  return {now_us, math.ceil((tonumber(current) - now_ms) * 1000)}
end
redis.call('SET', KEYS[3], string.format('%.3f', until_ms), 'PX', math.ceil(until_ms - now_ms) + 1000)
return {now_us, math.ceil((until_ms - now_ms) * 1000)}
