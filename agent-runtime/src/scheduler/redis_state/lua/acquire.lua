-- Checks and reserves every dimension of one call atomically: the pause, each bucket (requests,
-- tokens, daily caps) and the in-flight leases. Either everything is reserved or nothing is.
--
-- ARGV: lease_ttl_ms, max_in_flight (0 = no limit), start (0/1/2, common.lua's start_mode), guard_ms, n,
--       then n x (name, cap, period_ms, cost, kind)
-- Returns {1, now_us, lease_id}            granted; the lease is recorded under lease_id, which is
--                                          the grant's server time in µs (made unique)
--         {0, now_us, dimension, wait_us}  not now; nothing changed except pruned leases and
--                                          buckets started empty (stored so they refill)
--         {-1, now_us, dimension, cap}     the cost exceeds the capacity: never admissible
local lease_ttl = tonumber(ARGV[1])
local max_in_flight = tonumber(ARGV[2])
local empty, lost = start_mode(ARGV[3], KEYS[1])
local guard = tonumber(ARGV[4])
local specs = read_specs(6, tonumber(ARGV[5]), 5)
local now_us, now_ms = server_now()

for _, s in ipairs(specs) do
  if s.amount > s.cap then
    return {-1, now_us, s.name, s.cap}
  end
end

-- The longest exact wait wins: it is a lower bound on when every dimension can be satisfied.
local wait, dimension = 0, ''
local paused = redis.call('GET', KEYS[3])
if paused and tonumber(paused) > now_ms then
  wait, dimension = tonumber(paused) - now_ms, 'paused'
end
for _, s in ipairs(specs) do
  load_meter(KEYS[1], s, now_ms, empty, lost)
  local w = meter_wait(s, s.amount, now_ms, guard)
  if w > wait then
    wait, dimension = w, s.name
  end
end

prune_leases(KEYS[2], now_ms)
if wait <= 0 and max_in_flight > 0 and redis.call('ZCARD', KEYS[2]) >= max_in_flight then
  -- The oldest lease's expiry bounds the wait; a holder that settles frees the slot sooner.
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  wait, dimension = math.max(0.001, tonumber(first[2]) - now_ms), 'in_flight'
end
if wait > 0 then
  -- An empty start refills (a spent window turns) from now: store it, or every ask would start
  -- it again. A quota that callers are waiting on is not idle: its state lives on (a hash that
  -- expired under a long pause would look lost to them).
  local ttl = 0
  for _, s in ipairs(specs) do
    if s.fresh then
      ttl = math.max(ttl, store_fresh(KEYS[1], s, now_ms))
    else
      ttl = math.max(ttl, meter_ttl(s))
    end
  end
  if ttl > 0 then
    keep_for(KEYS[1], ttl)
  end
  return {0, now_us, dimension, math.ceil(wait * 1000)}
end

local ttl = 0
for _, s in ipairs(specs) do
  meter_take(KEYS[1], s, s.amount, now_ms)
  ttl = math.max(ttl, meter_ttl(s))
end
if #specs > 0 then
  keep_for(KEYS[1], ttl)
end
-- The grant's own server time names the lease: unique because scripts run one at a time, and
-- bumped past any id still held should the server clock ever step back.
local lease_id = now_us
while redis.call('ZSCORE', KEYS[2], string.format('%.0f', lease_id)) do
  lease_id = lease_id + 1
end
redis.call('ZADD', KEYS[2], string.format('%.3f', now_ms + lease_ttl), string.format('%.0f', lease_id))
keep_for(KEYS[2], lease_ttl)
return {1, now_us, lease_id}
