//! Shared harness for Turnstile's integration tests (one test file per area under `tests/`).
