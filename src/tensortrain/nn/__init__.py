"""TT layers as ordinary PyTorch modules: ``tt.nn.TTLinear``, ``tt.nn.TTEmbedding``, ``tt.nn.functional``."""

from . import functional, init
from .embedding import TTEmbedding
from .linear import TTLinear

__all__ = ["TTEmbedding", "TTLinear", "functional", "init"]
