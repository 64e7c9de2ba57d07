"""The LLM path: real Hugging Face models (and tiny stand-ins for CPU tests)."""
