//! The Lua scripts of the shared quota, their keys, and their replies decoded into Rust.
//!
//! Each script is the common prelude (`lua/common.lua`) followed by one operation, so the bucket
//! arithmetic is written once. `redis::Script` sends `EVALSHA` and loads the script on `NOSCRIPT`
//! (after a Redis restart or failover), so the steady state is one round trip per operation.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script, ScriptInvocation, Value};

/// One continuous bucket of a quota as the scripts store it: `capacity` units, refilled at
/// `capacity / period` continuously (so `capacity` is both the limit per period and the burst).
///
/// Processes sharing a quota must agree on the buckets; a process passing a different capacity
/// for the same name simply sees the level clamped to its own capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketSpec {
    /// The dimension's name as stored and reported, e.g. `"requests"` or `"tokens"`.
    pub name: &'static str,
    /// The limit per period, which is also the most one burst can take.
    pub capacity: u64,
    /// The period over which `capacity` refills completely (e.g. one minute).
    pub period: Duration,
}

impl BucketSpec {
    /// A bucket of `capacity` per `period`.
    pub fn new(name: &'static str, capacity: u64, period: Duration) -> Self {
        Self {
            name,
            capacity,
            period,
        }
    }

    /// Pushes `name, capacity, period_ms, amount` onto a script call.
    fn push(&self, inv: &mut ScriptInvocation<'_>, amount: f64) {
        // At least 1 ms so a zero period cannot divide by zero inside Redis; `validate` rejects it
        // before it gets here.
        let period_ms = self.period.as_secs_f64() * 1000.0;
        inv.arg(self.name)
            .arg(self.capacity)
            .arg(period_ms.max(1.0))
            .arg(amount);
    }
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
    /// Every dimension was reserved and the lease recorded.
    Granted { server_us: u64 },
    /// Not now; `dimension` is the one with the longest wait.
    Wait {
        server_us: u64,
        dimension: String,
        wait: Duration,
    },
    /// The cost exceeds the bucket's capacity.
    Never { dimension: String, capacity: u64 },
}

/// A quota's state as read by the inspect script.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InspectReply {
    pub(crate) server_us: u64,
    pub(crate) in_flight: u64,
    pub(crate) paused_for: Duration,
    pub(crate) levels: Vec<f64>,
}

/// The loaded-once scripts.
#[derive(Debug)]
pub(crate) struct Scripts {
    acquire: Script,
    settle: Script,
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
            renew: quota_script!("lua/renew.lua"),
            pause: quota_script!("lua/pause.lua"),
            observe: quota_script!("lua/observe.lua"),
            inspect: quota_script!("lua/inspect.lua"),
        }
    }

    /// Checks and reserves `costs` plus one in-flight slot under `lease_id`.
    pub(crate) async fn acquire(
        &self,
        conn: &mut ConnectionManager,
        keys: &QuotaKeys,
        lease_id: &str,
        lease_ttl: Duration,
        max_in_flight: Option<u32>,
        costs: &[(BucketSpec, u64)],
    ) -> RedisResult<AcquireReply> {
        let mut inv = self.acquire.prepare_invoke();
        keys.push(&mut inv);
        inv.arg(lease_id)
            .arg(duration_ms(lease_ttl))
            .arg(max_in_flight.unwrap_or(0))
            .arg(costs.len());
        for (spec, cost) in costs {
            spec.push(&mut inv, *cost as f64);
        }
        let reply: Vec<Value> = inv.invoke_async(conn).await?;
        match reply.first().and_then(as_i64) {
            Some(1) => Ok(AcquireReply::Granted {
                server_us: field_u64(&reply, 1)?,
            }),
            Some(0) => Ok(AcquireReply::Wait {
                server_us: field_u64(&reply, 1)?,
                dimension: field_string(&reply, 2)?,
                wait: Duration::from_micros(field_u64(&reply, 3)?),
            }),
            Some(-1) => Ok(AcquireReply::Never {
                dimension: field_string(&reply, 2)?,
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
        lease_id: &str,
        deltas: &[(BucketSpec, i64)],
    ) -> RedisResult<bool> {
        let mut inv = self.settle.prepare_invoke();
        keys.push(&mut inv);
        inv.arg(lease_id).arg(deltas.len());
        for (spec, delta) in deltas {
            spec.push(&mut inv, *delta as f64);
        }
        let reply: Vec<Value> = inv.invoke_async(conn).await?;
        Ok(field_u64(&reply, 0)? == 1)
    }

    /// Extends a live lease; false when it had already expired.
    pub(crate) async fn renew(
        &self,
        conn: &mut ConnectionManager,
        keys: &QuotaKeys,
        lease_id: &str,
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
        remaining: &[(BucketSpec, u64)],
    ) -> RedisResult<()> {
        let mut inv = self.observe.prepare_invoke();
        keys.push(&mut inv);
        inv.arg(remaining.len());
        for (spec, left) in remaining {
            spec.push(&mut inv, *left as f64);
        }
        let _: Vec<Value> = inv.invoke_async(conn).await?;
        Ok(())
    }

    /// Reads levels, live leases and the pause without changing anything.
    pub(crate) async fn inspect(
        &self,
        conn: &mut ConnectionManager,
        keys: &QuotaKeys,
        specs: &[BucketSpec],
    ) -> RedisResult<InspectReply> {
        let mut inv = self.inspect.prepare_invoke();
        keys.push(&mut inv);
        inv.arg(specs.len());
        for spec in specs {
            spec.push(&mut inv, 0.0);
        }
        let reply: Vec<Value> = inv.invoke_async(conn).await?;
        let mut levels = Vec::with_capacity(specs.len());
        for i in 0..specs.len() {
            let text = field_string(&reply, 3 + i)?;
            let level = text
                .parse::<f64>()
                .map_err(|_| malformed("inspect", &reply))?;
            levels.push(level);
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
