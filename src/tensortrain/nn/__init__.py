"""TT layers as ordinary PyTorch modules (placeholder)."""

__all__: list[str] = []
