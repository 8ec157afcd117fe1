//! Decides, when the crate's tests are built, which Redis tests can run here: a test with nothing
//! to run against is compiled as `#[ignore]` (reported as skipped) instead of returning early and
//! counting as passed. No effect on the library itself.

use std::env;
use std::path::Path;

fn on_path(binary: &str) -> bool {
    env::var_os("PATH").is_some_and(|paths| {
        env::split_paths(&paths).any(|dir| Path::new(&dir).join(binary).is_file())
    })
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(no_redis_server)");
    println!("cargo::rustc-check-cfg=cfg(no_redis)");
    println!("cargo::rustc-check-cfg=cfg(no_redis_tls)");
    println!("cargo::rerun-if-env-changed=REDIS_URL");
    println!("cargo::rerun-if-env-changed=REDIS_TLS_URL");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-changed=build.rs");
    let server = on_path("redis-server");
    if !server {
        // Tests that start a private redis-server on a free port.
        println!("cargo::rustc-cfg=no_redis_server");
    }
    if !server && env::var_os("REDIS_URL").is_none() {
        // Tests that use REDIS_URL's server, or else a private one.
        println!("cargo::rustc-cfg=no_redis");
    }
    if env::var_os("REDIS_TLS_URL").is_none() {
        println!("cargo::rustc-cfg=no_redis_tls");
    }
}
