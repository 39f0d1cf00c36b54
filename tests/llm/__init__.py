"""Tests of the LLM agent's test infrastructure: a replaying OpenAI-compatible server."""
