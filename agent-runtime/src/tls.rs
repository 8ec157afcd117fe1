//! The TLS crypto provider: `ring`, installed as the process default the first time a provider
//! or a Redis backend needs TLS, unless the application installed one first.
//!
//! rustls needs exactly one process-wide crypto provider. Turnstile builds rustls with `ring`
//! only (no aws-lc-sys C build; the root `Cargo.toml` says why) and reqwest without a provider of
//! its own, so this is where the choice is made. An application that wants aws-lc-rs (or any
//! other) calls `CryptoProvider::install_default` before building an `OpenAiProvider` or
//! connecting to Redis; this then does nothing.

/// Installs `ring` as the process's rustls crypto provider unless one is installed already.
///
/// Turnstile calls this itself before it builds an HTTP client or a Redis TLS connection. Call it
/// first when the program builds its own `reqwest` client and its `reqwest` has no crypto
/// provider of its own (reqwest built with `rustls-no-provider`, as Turnstile's is); otherwise
/// that client panics at build time asking for one.
///
/// ```
/// agent_runtime::tls::install_crypto_provider();
/// agent_runtime::tls::install_crypto_provider(); // a second call does nothing
/// ```
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: either provider serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
