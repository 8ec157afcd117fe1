-- Turnstile shared quota: the prelude every script starts with (prepended at compile time).
--
-- KEYS[1] buckets (hash), KEYS[2] leases (zset), KEYS[3] pause (string); the caller puts all three
-- under one `{prefix:quota}` hash tag so a script touches one Redis Cluster slot.
--
-- Every bucket is continuous: capacity `cap`, refilled at cap/period per millisecond, stored as
-- `<name>:l` (level) and `<name>:t` (server time of that level, ms). A missing field is a full
-- bucket, which is why idle keys may expire once every bucket in them has refilled.

-- TIME is non-deterministic; Redis < 5 replicates scripts verbatim unless told to replicate
-- effects. A no-op on Redis 7.
if redis.replicate_commands then
  redis.replicate_commands()
end

-- Server time, so the clocks of the clients never matter. Microseconds are kept exact (they are
-- returned to the client as an integer); milliseconds as a float for the arithmetic.
local function server_now()
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  return now_us, now_us / 1000
end

-- The level of one bucket at `now_ms`, after continuous refill (never above capacity; negative
-- after an extra charge, which later callers then wait out). A bucket not stored yet starts full,
-- or empty when `empty` (the quota's `start_empty`, or state lost to a restart); the third value
-- is then true: the caller must store it, or an empty start would never refill.
local function load_bucket(key, name, cap, period_ms, now_ms, empty)
  local rate = cap / period_ms
  local v = redis.call('HMGET', key, name .. ':l', name .. ':t')
  if not v[1] or not v[2] then
    if empty then
      return 0, rate, true
    end
    return cap, rate, false
  end
  local elapsed = now_ms - tonumber(v[2])
  if elapsed < 0 then
    elapsed = 0
  end
  return math.min(cap, tonumber(v[1]) + elapsed * rate), rate
end

-- Floats are written with string.format: Lua's default number-to-string keeps only 14
-- significant digits, which would round a millisecond timestamp.
local function store_bucket(key, name, level, now_ms)
  redis.call('HSET', key, name .. ':l', string.format('%.6f', level), name .. ':t',
    string.format('%.3f', now_ms))
end

-- Time until a bucket at `level` is full again: how long its key must live.
local function time_to_full(cap, rate, level)
  if level >= cap then
    return 0
  end
  return (cap - level) / rate
end

-- Extends a key's expiry to at least `ms` (plus a second of slack), never shortens it: the hash
-- may hold a slower bucket (a daily cap) that this call did not touch.
local function keep_for(key, ms)
  local want = math.ceil(ms) + 1000
  local ttl = redis.call('PTTL', key)
  if ttl < want then
    redis.call('PEXPIRE', key, want)
  end
end

-- Drops leases whose holders stopped renewing them (crashed or hung): their slots come back.
local function prune_leases(key, now_ms)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.3f', now_ms))
end

-- Reads bucket specs from ARGV starting at `first`, `width` values each: name, capacity,
-- period_ms, then (when width is 4) one number whose meaning the script defines.
local function read_specs(first, n, width)
  local specs = {}
  for i = 0, n - 1 do
    local base = first + i * width
    specs[i + 1] = {
      name = ARGV[base],
      cap = tonumber(ARGV[base + 1]),
      period = tonumber(ARGV[base + 2]),
      amount = tonumber(ARGV[base + 3]),
    }
  end
  return specs
end
