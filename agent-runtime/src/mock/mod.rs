//! An OpenAI-compatible mock server that enforces rate limits like the real provider.
