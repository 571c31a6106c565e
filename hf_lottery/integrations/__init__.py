"""Bridges to other libraries: peft (masked LoRA) and transformers (loading hooks for shrunk checkpoints)."""
