"""Test harnesses: the Slack emulator, the OpenAI stand-in, shared fixtures and paths."""
