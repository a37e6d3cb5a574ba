"""Gated multimodal unit fusion for fusebench (an example of an outside plugin package)."""
