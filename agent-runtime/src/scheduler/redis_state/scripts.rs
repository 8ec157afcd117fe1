//! The Lua scripts of the shared quota, their keys, and their replies decoded into Rust.
//!
//! Each script is the common prelude (`lua/common.lua`) followed by one operation, so the bucket
//! arithmetic is written once. `redis::Script` sends `EVALSHA` and loads the script on `NOSCRIPT`
//! (after a Redis restart or failover), so the steady state is one round trip per operation.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script, ScriptInvocation, Value};

use super::restart::Start;
use crate::scheduler::quota::{Cost, Dimension, Limiter, Limits, Rate, WindowStart};

/// One bucket of a quota as the scripts see it: its stored name and rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BucketArg {
    pub(crate) dimension: Dimension,
    pub(crate) rate: Rate,
}

impl BucketArg {
    /// The buckets `limits` sets, in a fixed order.
    pub(crate) fn of(limits: &Limits) -> impl Iterator<Item = BucketArg> {
        [
            (Dimension::Requests, limits.requests),
            (Dimension::Tokens, limits.tokens),
            (Dimension::RequestsPerDay, limits.requests_per_day),
            (Dimension::TokensPerDay, limits.tokens_per_day),
        ]
        .into_iter()
        .filter_map(|(dimension, rate)| rate.map(|rate| BucketArg { dimension, rate }))
    }

    /// What one admission of `cost` takes from this bucket.
    pub(crate) fn amount(&self, cost: Cost) -> u64 {
        if self.is_tokens() {
            cost.tokens
        } else {
            cost.requests
        }
    }

    pub(crate) fn is_tokens(&self) -> bool {
        matches!(self.dimension, Dimension::Tokens | Dimension::TokensPerDay)
    }

    /// Pushes `name, capacity, period_ms, amount, kind` onto a script call.
    fn push(&self, inv: &mut ScriptInvocation<'_>, amount: f64) {
        // At least 1 ms: the scheduler validates periods above zero, and Redis must never divide
        // by zero whatever it is sent.
        let period_ms = self.rate.period.as_secs_f64() * 1000.0;
        inv.arg(dimension_name(self.dimension))
            .arg(self.rate.limit)
            .arg(period_ms.max(1.0))
            .arg(amount)
            .arg(limiter_kind(self.rate.limiter));
    }
}

/// How the scripts name a limiter kind (`common.lua`'s meters).
fn limiter_kind(limiter: Limiter) -> &'static str {
    match limiter {
        Limiter::FixedWindow(WindowStart::FirstRequest) => "f",
        // A learned phase is this process's alone: shared, a window follows the server's clock.
        Limiter::FixedWindow(_) => "c",
        Limiter::SlidingWindow => "s",
        _ => "b",
    }
}

/// The name a dimension is stored and reported under.
fn dimension_name(dimension: Dimension) -> &'static str {
    match dimension {
        Dimension::Requests => "requests",
        Dimension::Tokens => "tokens",
        Dimension::RequestsPerDay => "requests_per_day",
        Dimension::TokensPerDay => "tokens_per_day",
        Dimension::InFlight => "in_flight",
        _ => "paused",
    }
}

fn parse_dimension(name: &str) -> Option<Dimension> {
    Some(match name {
        "requests" => Dimension::Requests,
        "tokens" => Dimension::Tokens,
        "requests_per_day" => Dimension::RequestsPerDay,
        "tokens_per_day" => Dimension::TokensPerDay,
        "in_flight" => Dimension::InFlight,
        "paused" => Dimension::Paused,
        _ => return None,
    })
}

/// The three keys of one quota. They share the `{prefix:quota}` hash tag, so on Redis Cluster they
/// live in one slot and a script may touch all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuotaKeys {
    /// Hash of bucket levels and their timestamps.
    pub(crate) buckets: String,
    /// Sorted set of lease ids scored by expiry (server ms).
    pub(crate) leases: String,
    /// Server ms until which the quota is paused.
    pub(crate) pause: String,
}

impl QuotaKeys {
    pub(crate) fn new(prefix: &str, quota: &str) -> Self {
        let tag = format!("{{{prefix}:{quota}}}");
        Self {
            buckets: format!("{tag}:buckets"),
            leases: format!("{tag}:leases"),
            pause: format!("{tag}:pause"),
        }
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(&self.buckets).key(&self.leases).key(&self.pause);
    }
}

/// What the acquire script decided.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AcquireReply {
    /// Every dimension was reserved and the lease recorded under `lease_id`.
    Granted { lease_id: u64 },
    /// Not now; `dimension` is the one with the longest wait.
    Wait {
        dimension: Dimension,
        wait: Duration,
    },
    /// The cost exceeds the bucket's capacity.
    Never { dimension: Dimension, capacity: u64 },
}

/// A quota's state as read by the inspect script.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InspectReply {
    pub(crate) server_us: u64,
    pub(crate) in_flight: u64,
    pub(crate) paused_for: Duration,
    pub(crate) levels: Vec<(Dimension, f64)>,
}

/// The loaded-once scripts.
#[derive(Debug)]
pub(crate) struct Scripts {
    acquire: Script,
    settle: Script,
    lag: Script,
    renew: Script,
    pause: Script,
    observe: Script,
    inspect: Script,
}

macro_rules! quota_script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("lua/common.lua"),
            "\n",
            include_str!($file)
        ))
    };
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            acquire: quota_script!("lua/acquire.lua"),
            settle: quota_script!("lua/settle.lua"),
            lag: quota_script!("lua/lag.lua"),
            renew: quota_script!("lua/renew.lua"),
            pause: quota_script!("lua/pause.lua"),
            observe: quota_script!("lua/observe.lua"),
            inspect: quota_script!("lua/inspect.lua"),
        }
    }

    /// Checks and reserves `cost` in every bucket of `limits` plus one in-flight slot.
    pub(crate) async fn acquire(
        &self,
        conn: &mut ConnectionManager,
        keys: &QuotaKeys,
        limits: &Limits,
        start: Start,
        cost: Cost,
        lease_ttl: Duration,
    ) -> RedisResult<AcquireReply> {
        let mut inv = self.acquire.prepare_invoke();
        keys.push(&mut inv);
        let buckets: Vec<BucketArg> = BucketArg::of(limits).collect();
        inv.arg(duration_ms(lease_ttl))
            .arg(limits.max_in_flight.unwrap_or(0))
            .arg(start.arg())
            .arg(limits.guard.as_secs_f64() * 1000.0)
            .arg(buckets.len());
        for b in &buckets {
            b.push(&mut inv, b.amount(cost) as f64);
        }
        let reply: Vec<Value> = inv.invoke_async(conn).await?;
        match reply.first().and_then(as_i64) {
            Some(1) => Ok(AcquireReply::Granted {
                lease_id: field_u64(&reply, 2)?,
            }),
            Some(0) => Ok(AcquireReply::Wait {
                dimension: field_dimension(&reply, 2)?,
                wait: Duration::from_micros(field_u64(&reply, 3)?),
            }),
            Some(-1) => Ok(AcquireReply::Never {
                dimension: field_dimension(&reply, 2)?,
                capacity: field_u64(&reply, 3)?,
            }),
            _ => Err(malformed("acquire", &reply)),
        }
    }

    /// Releases `lease_id` and moves each bucket by its delta (refund > 0, extra charge < 0).
    /// Returns whether the lease was still held.
    pub(crate) async fn settle(
        &self,
        conn: &mut ConnectionManager,
        keys: &QuotaKeys,
        lease_id: u64,
        start: Start,
        deltas: &[(BucketArg, i64)],
    ) -> RedisResult<bool> {
        let mut inv = self.settle.prepare_invoke();
        keys.push(&mut inv);
        // Every script reads missing state the same way (`Start`): otherwise a settle or observe
        // after an idle key expired, or after a restart, would refill it.
        inv.arg(lease_id).arg(start.arg()).arg(deltas.len());
        for (bucket, delta) in deltas {
            bucket.push(&mut inv, *delta as f64);
        }
        let reply: Vec<Value> = inv.invoke_async(conn).await?;
        Ok(field_u64(&reply, 0)? == 1)
    }

    /// Lowers every continuous bucket of `limits` by `by`'s worth of refill.
    pub(crate) async fn lag(
        &self,
        conn: &mut ConnectionManager,
        keys: &QuotaKeys,
        limits: &Limits,
        start: Start,
        by: Duration,
    ) -> RedisResult<()> {
        let mut inv = self.lag.prepare_invoke();
        keys.push(&mut inv);
        let buckets: Vec<BucketArg> = BucketArg::of(limits).collect();
        inv.arg(start.arg())
            .arg(by.as_secs_f64() * 1000.0)
            .arg(buckets.len());
        for b in &buckets {
            b.push(&mut inv, 0.0);
        }
        let _: Vec<Value> = inv.invoke_async(conn).await?;
        Ok(())
    }

    /// Extends a live lease; false when it had already expired.
    pub(crate) async fn renew(
        &self,
        conn: &mut ConnectionManager,
        keys: &QuotaKeys,
        lease_id: u64,
        lease_ttl: Duration,
    ) -> RedisResult<bool> {
        let mut inv = self.renew.prepare_invoke();
        keys.push(&mut inv);
        inv.arg(lease_id).arg(duration_ms(lease_ttl));
        let reply: Vec<Value> = inv.invoke_async(conn).await?;
        Ok(field_u64(&reply, 0)? == 1)
    }

    /// Pauses the quota for `duration` (never shortening a longer pause); returns the pause now in
    /// force.
    pub(crate) async fn pause(
        &self,
        conn: &mut ConnectionManager,
        keys: &QuotaKeys,
        duration: Duration,
    ) -> RedisResult<Duration> {
        let mut inv = self.pause.prepare_invoke();
        keys.push(&mut inv);
        inv.arg(duration_ms(duration));
        let reply: Vec<Value> = inv.invoke_async(conn).await?;
        Ok(Duration::from_micros(field_u64(&reply, 1)?))
    }

    /// Lowers buckets to the provider-reported remaining amounts.
    pub(crate) async fn observe(
        &self,
        conn: &mut ConnectionManager,
        keys: &QuotaKeys,
        start: Start,
        remaining: &[(BucketArg, u64)],
    ) -> RedisResult<()> {
        let mut inv = self.observe.prepare_invoke();
        keys.push(&mut inv);
        inv.arg(start.arg()).arg(remaining.len());
        for (bucket, left) in remaining {
            bucket.push(&mut inv, *left as f64);
        }
        let _: Vec<Value> = inv.invoke_async(conn).await?;
        Ok(())
    }

    /// Reads levels, live leases and the pause without changing anything.
    pub(crate) async fn inspect(
        &self,
        conn: &mut ConnectionManager,
        keys: &QuotaKeys,
        limits: &Limits,
    ) -> RedisResult<InspectReply> {
        let mut inv = self.inspect.prepare_invoke();
        keys.push(&mut inv);
        let buckets: Vec<BucketArg> = BucketArg::of(limits).collect();
        inv.arg(buckets.len());
        for b in &buckets {
            b.push(&mut inv, f64::from(u8::from(limits.start_empty)));
        }
        let reply: Vec<Value> = inv.invoke_async(conn).await?;
        let mut levels = Vec::with_capacity(buckets.len());
        for (i, b) in buckets.iter().enumerate() {
            let text = field_string(&reply, 3 + i)?;
            let level = text
                .parse::<f64>()
                .map_err(|_| malformed("inspect", &reply))?;
            levels.push((b.dimension, level));
        }
        Ok(InspectReply {
            server_us: field_u64(&reply, 0)?,
            in_flight: field_u64(&reply, 1)?,
            paused_for: Duration::from_micros(field_u64(&reply, 2)?),
            levels,
        })
    }
}

/// Milliseconds as a float, so sub-millisecond durations are not rounded to zero.
fn duration_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn field_u64(reply: &[Value], i: usize) -> RedisResult<u64> {
    reply
        .get(i)
        .and_then(as_i64)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| malformed("quota", reply))
}

fn field_string(reply: &[Value], i: usize) -> RedisResult<String> {
    match reply.get(i) {
        Some(Value::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
        Some(Value::SimpleString(s)) => Ok(s.clone()),
        _ => Err(malformed("quota", reply)),
    }
}

fn field_dimension(reply: &[Value], i: usize) -> RedisResult<Dimension> {
    parse_dimension(&field_string(reply, i)?).ok_or_else(|| malformed("acquire", reply))
}

fn malformed(script: &'static str, reply: &[Value]) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply from a Turnstile quota script",
        format!("{script}: {reply:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_quota_share_one_hash_tag() {
        let keys = QuotaKeys::new("svc", "openai:gpt-4o");
        let tag = "{svc:openai:gpt-4o}";
        for key in [&keys.buckets, &keys.leases, &keys.pause] {
            assert!(key.starts_with(tag), "{key}");
        }
        assert_ne!(keys.buckets, keys.leases);
        assert_ne!(keys.leases, keys.pause);
    }

    #[test]
    fn every_dimension_round_trips_through_its_stored_name() {
        for d in [
            Dimension::Requests,
            Dimension::Tokens,
            Dimension::RequestsPerDay,
            Dimension::TokensPerDay,
            Dimension::InFlight,
            Dimension::Paused,
        ] {
            assert_eq!(parse_dimension(dimension_name(d)), Some(d));
        }
    }

    #[test]
    fn scripts_start_with_the_common_prelude() {
        let scripts = Scripts::new();
        // Distinct bodies give distinct hashes: the prelude did not swallow the operation.
        let hashes = [
            scripts.acquire.get_hash(),
            scripts.settle.get_hash(),
            scripts.renew.get_hash(),
            scripts.pause.get_hash(),
            scripts.observe.get_hash(),
            scripts.inspect.get_hash(),
        ];
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
