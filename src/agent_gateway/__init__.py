"""Agent Gateway: one agent secret in, each user's own LiteLLM key out, every call metered."""

__version__ = "0.1.0"
