//! Providers: the OpenAI-compatible HTTP provider and the in-process simulator.
