"""cs336_alignment: LLM post-training from scratch in pure PyTorch (CS336-style)."""

__version__ = "0.1.0"
