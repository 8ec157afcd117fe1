//! Built-in agents: an LLM agent, a user proxy, and a function agent.
