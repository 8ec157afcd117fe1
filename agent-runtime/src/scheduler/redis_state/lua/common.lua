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

-- Reads meter specs from ARGV starting at `first`, `width` values each: name, capacity,
-- period_ms, one number whose meaning the script defines, and the limiter kind:
-- 'b' continuous bucket, 'c' fixed window on the server's clock, 'f' fixed window anchored at the
-- first request, 's' sliding log.
local function read_specs(first, n, width)
  local specs = {}
  for i = 0, n - 1 do
    local base = first + i * width
    specs[i + 1] = {
      name = ARGV[base],
      cap = tonumber(ARGV[base + 1]),
      period = tonumber(ARGV[base + 2]),
      amount = tonumber(ARGV[base + 3]),
      kind = ARGV[base + 4] or 'b',
    }
  end
  return specs
end

-- Meters of every kind, with the same four operations so each script is written once.
--
-- Windows store `<name>:w` (the window's start, server ms) and `<name>:u` (units used in it);
-- a clock window's start is the last multiple of the period since the epoch, plus a skew margin
-- of 1 % of the period (at most 250 ms) so a window never opens before the provider's. A
-- sliding log is a sorted set `<buckets key>:log:<name>` of `<ms>:<n>:<amount>` members scored by
-- their time (it shares the quota's hash tag, so it lives in the same cluster slot).

local function log_key(key, name)
  return key .. ':log:' .. name
end

local function log_amount(member)
  return tonumber(string.match(member, ':([-%d%.]+)$'))
end

-- How a script starts state it finds missing, from its `start` argument: 0 as configured (a
-- bucket full, a window unspent), 1 a bucket empty (the quota's start_empty), 2 state the client
-- knows was there within its period, so Redis lost it (a restart, a flush): a bucket empty and,
-- when the quota's hash is gone too, a window spent until it turns (its count at the provider is
-- unknown). A dimension merely switched to a new kind leaves the hash in place: not a loss.
-- Returns `empty` and `lost`; call before the script writes anything.
local function start_mode(arg, key)
  local mode = tonumber(arg) or 0
  return mode >= 1, mode == 2 and redis.call('EXISTS', key) == 0
end

local function load_meter(key, s, now_ms, empty, lost)
  if s.kind == 'c' or s.kind == 'f' then
    local v = redis.call('HMGET', key, s.name .. ':w', s.name .. ':u', s.name .. ':c')
    local stored, used, carry = tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3]) or 0
    local start
    s.margin = math.min(s.period / 100, 250)
    if s.kind == 'c' then
      start = math.floor((now_ms - s.margin) / s.period) * s.period + s.margin
    elseif stored and now_ms - stored < s.period then
      start = stored
    end
    if not stored or start ~= stored then
      -- What the window just closed took at its very end, the provider may count in this one
      -- (see meter_take); a window further back carries nothing.
      if stored and s.kind == 'c' and math.abs(start - stored - s.period) < 1 then
        used = carry
      else
        used = 0
      end
      carry = 0
    end
    s.carry = carry
    if lost and not stored then
      -- A first-request window's phase is unknown too: spent for one period from now.
      start, used, s.fresh = start or now_ms, s.cap, true
    end
    s.start, s.used = start, used
    s.level = s.cap - used
  elseif s.kind == 's' then
    local log = log_key(key, s.name)
    redis.call('ZREMRANGEBYSCORE', log, '-inf', string.format('%.3f', now_ms - s.period))
    local entries = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
    local sum = 0
    s.entries = {}
    for i = 1, #entries, 2 do
      local amount = log_amount(entries[i])
      sum = sum + amount
      s.entries[#s.entries + 1] = {member = entries[i], at = tonumber(entries[i + 1]), amount = amount}
    end
    if lost and #s.entries == 0 then
      -- One entry of the whole limit, now: the log frees it one period from now.
      s.entries[1] = {member = string.format('%.3f:lost:%.6f', now_ms, s.cap), at = now_ms,
        amount = s.cap}
      sum, s.fresh = s.cap, true
    end
    s.level = s.cap - sum
  else
    s.level, s.rate, s.fresh = load_bucket(key, s.name, s.cap, s.period, now_ms, empty)
  end
end

-- Stores a meter load_meter started (s.fresh), so it counts from now instead of being started
-- again by every later call; returns how long it must live.
local function store_fresh(key, s, now_ms)
  if s.kind == 'c' or s.kind == 'f' then
    redis.call('HSET', key, s.name .. ':w', string.format('%.3f', s.start), s.name .. ':u',
      string.format('%.6f', s.used))
    return s.period
  elseif s.kind == 's' then
    local log = log_key(key, s.name)
    redis.call('ZADD', log, string.format('%.3f', now_ms), s.entries[1].member)
    redis.call('PEXPIRE', log, math.ceil(s.period) + 1000)
    redis.call('HSET', key, s.name .. ':s', string.format('%.3f', now_ms))
    return s.period
  end
  store_bucket(key, s.name, s.level, now_ms)
  return time_to_full(s.cap, s.rate, s.level)
end

-- How long until `amount` fits (0 if it does now). A continuous bucket waits until it would
-- cover `amount` plus `guard_ms` of refill (capped at its capacity), the slack that absorbs
-- network jitter between this admission and the provider's (`Quota::guard`); nil means none.
local function meter_wait(s, amount, now_ms, guard_ms)
  if s.kind == 'b' and guard_ms and guard_ms > 0 then
    amount = math.min(amount + s.rate * guard_ms, math.max(s.cap, amount))
  end
  if s.level >= amount then
    return 0
  end
  if s.kind == 'c' or s.kind == 'f' then
    if not s.start then
      return 0
    end
    local wait = s.start + s.period - now_ms
    if (s.carry or 0) + amount > s.cap then
      -- The next window starts with this one's carry: the call fits the window after.
      wait = wait + s.period
    end
    return math.max(0.001, wait)
  elseif s.kind == 's' then
    local need, freed = amount - s.level, 0
    for _, e in ipairs(s.entries) do
      freed = freed + e.amount
      if freed >= need then
        return math.max(0.001, e.at + s.period - now_ms)
      end
    end
    return s.period
  end
  return (amount - s.level) / s.rate
end

local log_seq = 0

-- Whether a clock window is within its boundary band: the skew margin on either side of the
-- provider's boundary (the last two margins of this window), where what is taken or reported
-- may belong to the provider's next window. After load_meter.
local function in_band(s, now_ms)
  return s.kind == 'c' and now_ms >= s.start + s.period - 2 * s.margin
end

-- Takes `amount` (negative: gives it back), after load_meter.
local function meter_take(key, s, amount, now_ms)
  if s.kind == 'c' or s.kind == 'f' then
    if not s.start then
      s.start = now_ms
    end
    s.used = math.max(0, s.used + amount)
    -- Taken in the band: the provider may count it in the next window, so that one starts
    -- with it counted too. First-request windows have no boundary to straddle.
    if amount > 0 and in_band(s, now_ms) then
      s.carry = (s.carry or 0) + amount
    end
    s.carry = math.min(s.carry or 0, s.used)
    s.level = s.cap - s.used
    redis.call('HSET', key, s.name .. ':w', string.format('%.3f', s.start), s.name .. ':u',
      string.format('%.6f', s.used), s.name .. ':c', string.format('%.6f', s.carry))
  elseif s.kind == 's' then
    local log = log_key(key, s.name)
    if amount > 0 then
      log_seq = log_seq + 1
      redis.call('ZADD', log, string.format('%.3f', now_ms),
        string.format('%.3f:%d:%.6f', now_ms, log_seq, amount))
      -- The quota's hash holds a mark for the log: a hash gone while the client used the key
      -- recently is how a lost log is told from an empty one.
      redis.call('HSET', key, s.name .. ':s', string.format('%.3f', now_ms))
    else
      -- A refund comes off the newest entries (the settled call is among them).
      local back = -amount
      for i = #s.entries, 1, -1 do
        if back <= 0 then
          break
        end
        local e = s.entries[i]
        local take = math.min(e.amount, back)
        back = back - take
        redis.call('ZREM', log, e.member)
        if e.amount - take > 0 then
          redis.call('ZADD', log, string.format('%.3f', e.at),
            string.format('%.3f:r%d:%.6f', e.at, i, e.amount - take))
        end
      end
    end
    s.level = s.level - amount
    redis.call('PEXPIRE', log, math.ceil(s.period) + 1000)
  else
    s.level = math.min(s.cap, s.level - amount)
    store_bucket(key, s.name, s.level, now_ms)
  end
end

-- How long the meter's state must live after this operation.
local function meter_ttl(s)
  if s.kind == 'b' then
    return time_to_full(s.cap, s.rate, s.level)
  end
  return s.period
end
