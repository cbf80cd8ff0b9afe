"""A Keras 3 layer for t3f users: ``KerasDense``, a dense layer whose kernel is a TT-matrix.

t3f's ``t3f.nn.KerasDense`` cannot train under Keras 3 (its cores are raw TensorFlow variables that Keras 3
does not track). This module gives t3f code the same layer, with the same arguments, on Keras 3's PyTorch
backend: the cores are Keras weights (``add_weight``), so ``fit``, ``summary``, ``get_weights``/``set_weights``
and ``model.save``/``keras.models.load_model`` all see them, and the forward pass is
:func:`tensortrain.ops.matmul` on the cores.

Keras must run on PyTorch. Set the backend before Keras is first imported::

    import os
    os.environ["KERAS_BACKEND"] = "torch"   # or: export KERAS_BACKEND=torch
    from tensortrain.keras import KerasDense

Importing this module with Keras on another backend raises ``ImportError`` saying so. Install the extra with
``pip install "tensortrain[keras]"``.

Symbols: ``d`` number of cores, ``m_k`` input (row) modes, ``n_k`` output (column) modes, ``r`` TT-rank,
``B`` batch size.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Any, Literal

# The module is tensortrain.keras, but imports are absolute: this is the real Keras package.
try:
    import keras
except ModuleNotFoundError as exc:
    if exc.name == "keras":
        raise ImportError('tensortrain.keras needs Keras 3: pip install "tensortrain[keras]"') from exc
    # Keras itself is installed but its configured backend (by default tensorflow) is not.
    raise ImportError(
        f"Keras could not import its backend ({exc.name!r} is missing; KERAS_BACKEND="
        f"{os.environ.get('KERAS_BACKEND')!r}). tensortrain.keras runs on Keras' PyTorch backend: set "
        'KERAS_BACKEND=torch before Keras is first imported (os.environ["KERAS_BACKEND"] = "torch").'
    ) from exc

if keras.backend.backend() != "torch":
    raise ImportError(
        f"tensortrain.keras needs Keras' PyTorch backend, but Keras runs on {keras.backend.backend()!r}. "
        'Set KERAS_BACKEND=torch before Keras is first imported (os.environ["KERAS_BACKEND"] = "torch", '
        "or export KERAS_BACKEND=torch in the shell), in a fresh Python process."
    )

import torch

from . import initializers, ops
from .errors import ShapeError
from .shapes import as_int, normalize_tt_rank, plain_scalar, svd_tt_ranks
from .tensor_train import TensorTrain

__all__ = ["KerasDense"]

KernelInitializer = Literal["glorot", "he", "lecun"]

# t3f's names for the kernel schemes; each gives the full matrix the dense scheme's entry variance
# (glorot 2/(M+N), he 2/M, lecun 1/M with M = fan-in = prod(input_dims)).
_KERNEL_INITIALIZERS = {
    "glorot": initializers.glorot_initializer,
    "he": initializers.he_initializer,
    "lecun": initializers.lecun_initializer,
}


def _check_dims(dims: Sequence[int], name: str) -> tuple[int, ...]:
    """Python ints (for a JSON-able ``get_config``) from a sequence of ints or a 1-D integer array.

    t3f code passes NumPy values (``KerasDense(np.array([7, 4]), ...)``, sizes from ``np.prod``), which t3f
    accepts; floats and bools are refused, even whole ones.
    """
    ndim = getattr(dims, "ndim", None)  # NumPy arrays and tensors (NumPy is not a dependency)
    if ndim is not None and ndim != 1:
        raise TypeError(
            f"KerasDense: {name} must be a 1-D sequence of ints, got a {ndim}-D {type(dims).__name__}"
        )
    if ndim is None and (isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence)):
        raise TypeError(f"KerasDense: {name} must be a sequence of ints, got {dims!r}")
    ints = []
    for n in dims:
        k = as_int(n)  # None for bools, floats, strings
        if k is None:
            raise TypeError(f"KerasDense: {name} must contain ints, got {tuple(dims)!r}")
        ints.append(k)
    if len(ints) == 0 or any(n < 1 for n in ints):
        raise ShapeError(f"KerasDense: {name} must be non-empty positive ints, got {tuple(ints)}")
    return tuple(ints)


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (NumPy and 0-dim torch/NumPy scalars included), else None."""
    value = plain_scalar(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None


def _bias_initializer(value: float | str | dict[str, Any] | Any) -> Any:
    # t3f takes a number (bias = value * ones); any Keras initializer identifier works too. A NumPy scalar must
    # be read as that number: Keras would take a 0-dim array as a "direct tensor" of shape ()
    number = _number(value)
    if number is not None:
        return keras.initializers.Constant(number)
    return keras.initializers.get(value)


class _CoreInitializer:
    """Hands one precomputed core to ``add_weight`` (the cores are drawn jointly, see ``build``)."""

    def __init__(self, core: torch.Tensor):
        self.core = core

    def __call__(self, shape: Sequence[int], dtype: Any = None) -> torch.Tensor:
        return self.core


@keras.saving.register_keras_serializable(package="tensortrain")
class KerasDense(keras.layers.Layer):
    """A dense layer ``activation(x @ W + b)`` whose kernel ``W`` is a TT-matrix (t3f's ``KerasDense``).

    ``W`` has t3f's layout: ``prod(input_dims)`` rows and ``prod(output_dims)`` columns, core ``k`` of shape
    ``(r_{k-1}, input_dims[k], output_dims[k], r_k)``. The cores are Keras weights named ``core_0`` ...
    ``core_{d-1}``, created before the bias, so ``get_weights()`` returns ``[core_0, ..., core_{d-1}, bias]``
    and ``set_weights(list(tt.to_tt_matrix(W, shape=[input_dims, output_dims], max_tt_rank=r).tt_cores)
    + [bias])`` loads a compressed dense kernel (t3f's tutorial). Ranks above the largest useful rank of a
    bond are clipped to it as ``to_tt_matrix`` clips (:func:`tensortrain.svd_tt_ranks`), so both sides
    agree on the core shapes.

    Args:
        input_dims: the row modes ``(m_1, ..., m_d)``; the input's last axis has ``prod(input_dims)``
            features. Ints or a 1-D integer NumPy array, as in t3f.
        output_dims: the column modes ``(n_1, ..., n_d)``; the output has ``prod(output_dims)`` features.
        tt_rank: the TT-rank: an int, ``d - 1`` inner ranks, or the full ``d + 1`` tuple.
        activation: a Keras activation (name or callable) applied last; None for linear.
        use_bias: add a bias of ``prod(output_dims)`` values.
        kernel_initializer: ``"glorot"``, ``"he"`` or ``"lecun"`` (t3f's names): random TT cores whose full
            matrix has the dense scheme's entry variance (2/(M+N), 2/M, 1/M).
        bias_initializer: a number (every bias entry starts at it, t3f's meaning) or any Keras initializer.
        **kwargs: Keras layer arguments (``name``, ``dtype``, ``trainable``, ``autocast``). Under a mixed dtype
            policy the cores are variables of the policy's variable dtype and the product runs in its compute
            dtype, as for ``keras.layers.Dense``; with ``autocast=False`` it runs in the variable dtype
            throughout (where ``Dense`` still rounds its kernel to the compute dtype), and the flag is saved
            with the layer's config.

    Attributes:
        tt_ranks: the ranks of the cores, ``(1, r_1, ..., r_{d-1}, 1)``, after clipping.
        kernel_cores: the cores as Keras variables (created by ``build``).
        bias: the bias variable, or None; also readable as ``b``, t3f's name.
        matrix: the kernel as a :class:`~tensortrain.TensorTrain` over the cores' torch tensors (after
            ``build``; before it, a ``ValueError`` says the layer is not built).

    Raises:
        ShapeError: input_dims and output_dims of different lengths, non-positive dims, bad ranks, or a
            first input (the one that builds the layer) whose last axis is not ``prod(input_dims)``.
        TypeError: dims that are not sequences (or 1-D arrays) of ints.
        ValueError: an unknown ``kernel_initializer``; a later input whose last axis is not
            ``prod(input_dims)`` (Keras' check of the layer's ``input_spec``, as for ``keras.layers.Dense``).

    Shape:
        - Input: ``(..., prod(input_dims))`` (any number of leading axes).
        - Output: ``(..., prod(output_dims))``.

    Complexity:
        Forward ``O(B d r^2 m n max(M, N))``-ish through :func:`tensortrain.ops.matmul` (cost-planned: ``W``
        is built only where that is cheaper); parameters ``sum_k r_{k-1} m_k n_k r_k`` plus the bias.

    Example:
        >>> import os; os.environ.setdefault("KERAS_BACKEND", "torch")  # doctest: +SKIP
        >>> import keras
        >>> from tensortrain.keras import KerasDense
        >>> model = keras.Sequential([keras.Input((784,)),
        ...     KerasDense([7, 4, 7, 4], [5, 5, 5, 5], tt_rank=4, activation="relu", bias_initializer=1e-3),
        ...     keras.layers.Dense(10, activation="softmax")])
        >>> model.layers[0].count_params()
        1725
    """

    def __init__(
        self,
        input_dims: Sequence[int],
        output_dims: Sequence[int],
        tt_rank: int | Sequence[int] = 2,
        activation: str | Any | None = None,
        use_bias: bool = True,
        kernel_initializer: KernelInitializer = "glorot",
        bias_initializer: float | str | dict[str, Any] | Any = 0.1,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        # the layer acts on the last axis only, so a mask (Embedding(mask_zero=True) before it) passes through
        # unchanged, as through keras' Dense (dropped, pooling after it averaged the padded steps too)
        self.supports_masking = True
        self.input_dims = _check_dims(input_dims, "input_dims")
        self.output_dims = _check_dims(output_dims, "output_dims")
        d = len(self.input_dims)
        if len(self.output_dims) != d:
            raise ShapeError(
                f"KerasDense: input_dims {self.input_dims} and output_dims {self.output_dims} must have the "
                "same number of modes"
            )
        # (a str test first: Keras users also pass dicts and initializer objects, which are unhashable or never
        # equal to the names)
        if not isinstance(kernel_initializer, str) or kernel_initializer not in _KERNEL_INITIALIZERS:
            raise ValueError(
                f"KerasDense: unknown kernel_initializer {kernel_initializer!r}; "
                f"expected one of {sorted(_KERNEL_INITIALIZERS)}"
            )
        self.tt_rank = normalize_tt_rank(tt_rank, d)
        self.tt_ranks = svd_tt_ranks(
            self.tt_rank, [m * n for m, n in zip(self.input_dims, self.output_dims, strict=True)]
        )
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self._bias_initializer_arg = bias_initializer
        self.bias_initializer = _bias_initializer(bias_initializer)
        self.in_features = math.prod(self.input_dims)
        self.out_features = math.prod(self.output_dims)
        self.kernel_cores: list[Any] = []
        self.bias: Any = None

    def build(self, input_shape: Sequence[int | None]) -> None:
        """Create the cores (then the bias) as Keras weights for inputs of shape ``input_shape``."""
        if len(input_shape) == 0:
            raise ShapeError(
                f"KerasDense: the input must have shape (..., {self.in_features}) (input_dims {self.input_dims}), "
                "got a scalar"
            )
        if input_shape[-1] is not None and input_shape[-1] != self.in_features:
            raise ShapeError(
                f"KerasDense: the input has {input_shape[-1]} features (shape {tuple(input_shape)}) but "
                f"input_dims {self.input_dims} multiply to {self.in_features}"
            )
        # Keras checks inputs against it when the layer is called, symbolic ones too, as for keras.layers.Dense:
        # a built layer reused on inputs of another width is refused when a model is put together
        self.input_spec = keras.InputSpec(min_ndim=1, axes={-1: self.in_features})
        # The cores are drawn jointly (the scheme fixes the variance of the full matrix, i.e. of the
        # product of the cores); each Keras weight then starts from its core of that draw.
        init = _KERNEL_INITIALIZERS[self.kernel_initializer](
            [list(self.input_dims), list(self.output_dims)],
            tt_rank=self.tt_ranks,
            dtype=getattr(torch, self.variable_dtype),
        )
        # autocast=False: Keras (3.15) still autocasts variables inside __call__ under a mixed policy unless each
        # variable opts out, which Dense's kernel does not (its float16-rounded kernel meets a float32 input); the
        # cores do, so such a layer computes in the variables' dtype throughout. (Only then is add_weight given
        # the argument, which Keras takes from 3.2 on: pyproject admits 3.0.)
        opt_out: dict[str, Any] = {} if self.autocast else {"autocast": False}
        self.kernel_cores = [
            self.add_weight(
                shape=tuple(core.shape), initializer=_CoreInitializer(core), name=f"core_{k}", **opt_out
            )
            for k, core in enumerate(init.tt_cores)
        ]
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(self.out_features,), initializer=self.bias_initializer, name="bias", **opt_out
            )

    @property
    def matrix(self) -> TensorTrain:
        """The kernel as a :class:`TensorTrain` over the live cores (t3f's ``layer.matrix``).

        Raises:
            ValueError: the layer is not built yet (t3f builds its cores in ``__init__``; Keras 3 layers
                create their weights in ``build``, on first call or when a model is built).
        """
        if not self.kernel_cores:
            raise ValueError(
                f"KerasDense {self.name!r} is not built yet, so it has no cores: call it on an input, build "
                f"the model, or call build((None, {self.in_features})) first"
            )
        return TensorTrain([v.value for v in self.kernel_cores])

    @property
    def b(self) -> Any:
        """The bias variable, or None without a bias: t3f's name for :attr:`bias` (read-only)."""
        return self.bias

    def call(self, inputs: torch.Tensor) -> torch.Tensor:
        """``activation(inputs @ W + b)`` on torch tensors, cost-planned through ``tt.matmul`` (``W`` is built
        only where the planner finds that cheaper)."""
        if inputs.is_complex():  # (the cores are real: the product would fail inside tt.matmul)
            raise TypeError(f"KerasDense: complex inputs are not supported, got {inputs.dtype}")
        matrix = self.matrix  # (in compute_dtype while keras autocasts the variables, else in variable_dtype)
        if inputs.dtype != matrix.dtype:
            # integer images, as keras' Dense takes them, and float inputs of another precision: keras casts
            # those itself only while the layer's autocast is on; with it off (autocast=False, to keep one layer
            # in full precision under a mixed policy) the product runs in the variables' dtype, as Dense's does
            inputs = keras.ops.cast(inputs, str(matrix.dtype).removeprefix("torch."))
        y = ops.matmul(inputs, matrix)
        if self.bias is not None:
            y = y + self.bias.value
        return self.activation(y)  # keras.activations.get(None) is the identity

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        """``input_shape`` with the last axis replaced by ``prod(output_dims)``."""
        return (*tuple(input_shape)[:-1], self.out_features)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments (plus Keras' own), for ``from_config`` and ``model.save``."""
        config = super().get_config()
        bias_init: Any = _number(self._bias_initializer_arg)  # a plain float stays JSON
        if bias_init is None:
            bias_init = keras.initializers.serialize(self.bias_initializer)
        config.update(
            {
                "input_dims": list(self.input_dims),
                "output_dims": list(self.output_dims),
                "tt_rank": list(self.tt_rank),
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": self.kernel_initializer,
                "bias_initializer": bias_init,
            }
        )
        if not self.autocast:  # (Keras' own config leaves it out: Dense(autocast=False) loads back as True)
            config["autocast"] = False
        return config
