"""TT layers as ordinary PyTorch modules: ``tt.nn.TTLinear``, ``tt.nn.TTEmbedding``, ``tt.nn.functional``."""

from . import functional, init
from .linear import TTLinear

__all__ = ["TTLinear", "functional", "init"]
