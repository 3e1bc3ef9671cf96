"""Stand-in for vllm/entrypoints (the offline LLM class only)."""
