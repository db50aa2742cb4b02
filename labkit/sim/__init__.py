"""The simulated OpenAI-compatible service (placeholder; being written)."""
