"""tensortrain: tensor-train (TT) decompositions and TT-compressed neural networks for PyTorch.

``import tensortrain as tt``. The top level re-exports the TT algebra (t3f's names); ``tt.nn``,
``tt.approximate``, ``tt.kronecker``, ``tt.riemannian``, ``tt.datasets``, ``tt.workspace`` are namespaces.
``tensortrain.keras`` is not imported by ``import tensortrain``: import it yourself (it needs the optional
``keras`` extra and Keras' torch backend).
"""

from . import (  # noqa: F401  (namespaces: tt.nn, tt.kronecker, ...)
    approximate,
    batch_ops,
    contraction,
    datasets,
    decompositions,
    errors,
    initializers,
    kronecker,
    nn,
    ops,
    optim,
    regularizers,
    riemannian,
    shapes,
    tensor_train,
    variables,
    workspace,
)
from .autodiff import *  # noqa: F403
from .batch_ops import *  # noqa: F403
from .compression import *  # noqa: F403
from .decompositions import *  # noqa: F403
from .decompression import *  # noqa: F403
from .errors import *  # noqa: F403
from .initializers import *  # noqa: F403
from .io import *  # noqa: F403
from .ops import *  # noqa: F403
from .regularizers import *  # noqa: F403
from .riemannian import *  # noqa: F403
from .shapes import *  # noqa: F403
from .tensor_train import *  # noqa: F403
from .variables import *  # noqa: F403

__version__ = "0.1.0"

# Each module owns its public names in its own __all__; the top level is their union.
__all__ = sorted(
    {
        *errors.__all__,
        *tensor_train.__all__,
        *shapes.__all__,
        *initializers.__all__,
        *decompositions.__all__,
        *ops.__all__,
        *batch_ops.__all__,
        *variables.__all__,
        *riemannian.__all__,
        *regularizers.__all__,
        *__import__("tensortrain.autodiff", fromlist=["__all__"]).__all__,
        *__import__("tensortrain.compression", fromlist=["__all__"]).__all__,
        *__import__("tensortrain.decompression", fromlist=["__all__"]).__all__,
        *__import__("tensortrain.io", fromlist=["__all__"]).__all__,
    }
)
