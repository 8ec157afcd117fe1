//! Redis for the tests: the server `REDIS_URL` names, or a private `redis-server` started on a
//! free port. Tests that need one are marked ignored at build time (see `agent-runtime/build.rs`)
//! when neither exists, so they are reported as skipped, never as passed.
#![allow(dead_code, unreachable_pub, clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

/// A private `redis-server` on a free port, stopped on drop (the shared Redis is never stopped).
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// `None` when no `redis-server` binary is installed.
    pub fn start(port: Option<u16>) -> Option<Self> {
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        wait_ready(port);
        Some(Self {
            port,
            child: Some(child),
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until something accepts connections on `port` (at most 5 s).
fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The Redis a test runs against: `REDIS_URL`'s, or a private server stopped when this drops.
pub struct TestRedis {
    url: String,
    _private: Option<PrivateRedis>,
}

impl TestRedis {
    /// `REDIS_URL` if set, else a private `redis-server`. Panics with what to do when neither is
    /// available — the tests calling this are ignored at build time in that case.
    pub fn start() -> Self {
        if let Ok(url) = std::env::var("REDIS_URL") {
            return Self {
                url,
                _private: None,
            };
        }
        let private = PrivateRedis::start(None).expect(
            "no REDIS_URL and no redis-server binary: set REDIS_URL or install redis-server",
        );
        wait_ready(private.port);
        Self {
            url: private.url(),
            _private: Some(private),
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        self.url.clone()
    }
}
