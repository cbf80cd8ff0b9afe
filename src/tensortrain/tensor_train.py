"""``TensorTrain`` and ``TensorTrainBatch``: immutable values over a tuple of cores.

Core layouts (t3f's):

* TT-tensor core ``k``: ``(r_{k-1}, n_k, r_k)``; the dense tensor has shape ``(n_1, ..., n_d)``.
* TT-matrix core ``k``: ``(r_{k-1}, m_k, n_k, r_k)``; the dense matrix has ``M = m_1...m_d`` rows and
  ``N = n_1...n_d`` columns, with row index the row-major ravel of ``(i_1, ..., i_d)`` (as ``torch.reshape``).
* A batch prepends one axis of size ``B`` to every core.

Shape, ranks, dtype, device and batch size are derived from the cores, never stored beside them. Operators
(``+ - * @``, unary ``-``, division by a number) delegate to the functions in :mod:`tensortrain.ops`.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from .errors import ShapeError, fx_hint
from .shapes import plain_scalar

__all__ = ["TensorTrain", "TensorTrainBase", "TensorTrainBatch"]


def _fmt(dims: Sequence[int]) -> str:
    # a Python tuple's form, as t3f prints TensorShapes: (3,) for one mode
    return str(tuple(int(n) for n in dims))


# what TensorTrainBase.__torch_function__ takes (Tensor.__matmul__ dispatches as TensorBase.matmul, which
# `dense @ tt` and `dense.matmul(tt)` pass)
_MATMULS = (torch.Tensor.__matmul__, torch.Tensor.matmul, torch.matmul)


_TENSOR_ONLY = frozenset(
    "dim ndimension size numel nelement data grad is_leaf is_meta T mT t view reshape item tolist contiguous "
    "zero_ fill_ copy_ uniform_ normal_ mul_ add_ div_ clamp_ fill_diagonal_ bernoulli_ exponential_ new_empty "
    "new_zeros new_ones new_tensor data_ptr storage untyped_storage sum mean std var norm abs".split()
)
"""Tensor attributes a TT object lacks that code written for dense weights reaches for (see ``__getattr__``)."""


_CHALF = torch.complex32  # (ComplexHalf)
_PLAIN_TYPES = frozenset((torch.Tensor, torch.nn.Parameter))  # cores the fast validity test takes
# core dtypes TensorTrainBase._plainly_valid accepts at once (others go through the full checks)
CORE_DTYPES = frozenset(
    (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)
)


def check_cast(have: torch.dtype, dtype: Any, fn: str) -> None:
    """A cast of cores of dtype ``have`` to ``dtype`` gives a TT: a floating point or complex dtype of 16 bits
    or more, and not complex to real (the cores' real parts do not multiply out to the tensor's real part)."""
    if not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype.is_complex):
        raise TypeError(f"{fn}: dtype must be a floating point or complex torch.dtype, got {dtype!r}")
    if dtype.itemsize < 2:
        raise TypeError(f"{fn}: TT cores are 16 bits or more (float16 and up), got {dtype}")
    if dtype == _CHALF:
        raise TypeError(f"{fn}: complex32 has almost no kernels (no products, QR or SVD): use complex64")
    if have.is_complex and not dtype.is_complex:
        raise TypeError(
            f"{fn}: cannot cast a complex TT ({have}) to the real {dtype}: dropping the cores' imaginary parts "
            "does not give the tensor's real part (that is 0.5 * (a + conj(a)), a TT of twice the ranks)"
        )


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``torch.distributed`` DTensor (a shard of a parameter: FSDP2's ``fully_shard``, tensor
    parallelism), without importing ``torch.distributed`` where nothing has."""
    mod = sys.modules.get("torch.distributed.tensor")
    cls = getattr(mod, "DTensor", None) if mod is not None else None
    return cls is not None and isinstance(t, cls)


def dtensor_hint(fn: str, name: str) -> str:
    return (
        f"{fn}: {name} is a DTensor (sharded, e.g. by FSDP2's fully_shard): tensortrain works on whole cores; "
        "gather them first (DTensor.full_tensor(), or the FSDP module's unshard())"
    )


def _check_core(name: str, k: int, c: torch.Tensor, c0: torch.Tensor, b: int) -> None:
    """Refuse core ``k`` of a ``name`` (a TensorTrain, or a batch with ``b`` = 1 batch axis) whose number of dims,
    dtype, layout, device, sizes or batch size do not fit core 0 ``c0``'s."""
    ndim = c0.dim()
    if c.dim() != ndim:
        raise ShapeError(
            f"{name}: all cores must have the same number of dims, core 0 has {ndim} "
            f"but core {k} has shape {tuple(c.shape)}"
        )
    if not (c.is_floating_point() or c.is_complex()) or c.element_size() == 1 or c.dtype == _CHALF:
        # (1-byte floats are float8 storage formats, and complex32 has almost no kernels: no products
        # run in them)
        raise TypeError(
            f"{name}: cores must be floating point (16 bits or more) or complex64/128, core {k} has dtype "
            f"{c.dtype}; cast it first, e.g. core.to(torch.{'complex64' if c.is_complex() else 'float32'})"
        )
    if is_dtensor(c):
        raise TypeError(dtensor_hint(name, f"core {k}"))
    if c.layout != torch.strided or c.is_nested:
        raise TypeError(
            f"{name}: cores must be dense (strided) tensors, core {k} has layout {c.layout}"
            f"{' (nested)' if c.is_nested else ''}; e.g. core.to_dense()"
        )
    if c.dtype != c0.dtype:
        raise ShapeError(f"{name}: core 0 has dtype {c0.dtype} but core {k} has dtype {c.dtype}")
    if c.device != c0.device:
        raise ShapeError(f"{name}: core 0 is on {c0.device} but core {k} is on {c.device}")
    if any(s == 0 for s in c.shape):
        raise ShapeError(f"{name}: core {k} has an empty dimension, shape {tuple(c.shape)}")
    if b and c.shape[0] != c0.shape[0]:
        raise ShapeError(
            f"{name}: batch sizes differ, core 0 has {c0.shape[0]} elements, core {k} has {c.shape[0]}"
        )


class TensorTrainBase:
    """What ``TensorTrain`` and ``TensorTrainBatch`` share: validation, derived properties, operators."""

    _batch_axes = 0  # number of leading batch axes on every core
    # NumPy operands defer to the TT object's own operators (np.float64(2) * tt would otherwise treat a batch as
    # a sequence and return an object array of TTs)
    __array_ufunc__ = None

    def __init__(self, tt_cores: Sequence[torch.Tensor]):
        # any iterable of cores (an nn.ParameterList is not a Sequence); not a tensor, TT object, string, dict or
        # set (a set's order is arbitrary: the cores would be chained in any order)
        if isinstance(
            tt_cores, (torch.Tensor, TensorTrainBase, str, bytes, Mapping, set, frozenset)
        ) or not isinstance(tt_cores, Iterable):
            raise TypeError(
                f"{type(self).__name__} expects a sequence of core tensors, got {type(tt_cores).__name__}"
            )
        cores = tuple(tt_cores)
        if not self._plainly_valid(cores):  # (the common case in one pass; errors come from _validate)
            self._validate(cores)
        self._tt_cores = cores

    @classmethod
    def _from_valid(cls, cores: Sequence[torch.Tensor]) -> Any:
        """Internal: an object over cores valid by construction (the result of an operation on valid TT
        objects: block-diagonal or Kronecker-product cores, a QR or SVD sweep), without checking them again."""
        if (
            torch.compiler.is_compiling()
        ):  # (torch 2.6's dynamo cannot trace object.__new__; traced, checks are free)
            return cls(cores)
        new = cls.__new__(cls)
        new._tt_cores = tuple(cores)
        return new

    # ----------------------------------------------------------------------------------------- validation
    def _plainly_valid(self, cores: tuple[torch.Tensor, ...]) -> bool:
        """Whether the cores pass every check of :meth:`_validate`, decided in one pass over them: strided
        tensors of one dtype (16 bits or more, complex32 excepted) and device, the same number of dims and
        batch size, no empty dim, ranks chaining from 1 to 1. False sends the cores to :meth:`_validate`,
        which names what is wrong (and accepts what this conservative test does not know: a new dtype)."""
        if not cores:
            return False
        first, b = cores[0], self._batch_axes
        if not isinstance(first, torch.Tensor) or first.is_nested or first.dtype not in CORE_DTYPES:
            return False
        dtype, device, ndim, shape0 = first.dtype, first.device, first.dim(), first.shape
        if ndim != 3 + b and ndim != 4 + b:
            return False
        rank = 1
        for c in cores:
            # (layout and nesting first: a nested tensor has no shape to read)
            if not isinstance(c, torch.Tensor) or c.is_nested or c.layout != torch.strided:
                return False
            if type(c) not in _PLAIN_TYPES:  # (subclasses: _validate)
                return False
            shape = c.shape
            if (
                len(shape) != ndim
                or shape[b] != rank
                or 0 in shape
                or c.dtype != dtype
                or c.device != device
                or (b and shape[0] != shape0[0])
            ):
                return False
            rank = shape[-1]
        return bool(rank == 1)

    def _validate(self, cores: tuple[torch.Tensor, ...]) -> None:
        name = type(self).__name__
        if len(cores) == 0:
            raise ShapeError(f"{name} needs at least one core, got none")
        for k, c in enumerate(cores):
            if not isinstance(c, torch.Tensor):
                raise TypeError(
                    f"{name}: core {k} is a {type(c).__name__}, expected a torch.Tensor{fx_hint(c)}"
                )
        b = self._batch_axes
        ndim = cores[0].dim()
        if ndim not in (3 + b, 4 + b):
            raise ShapeError(
                f"{name}: cores must have {3 + b} dims (TT-tensor) or {4 + b} dims (TT-matrix), "
                f"core 0 has shape {tuple(cores[0].shape)}"
            )
        for k, c in enumerate(cores):
            _check_core(name, k, c, cores[0], b)
        if cores[0].shape[b] != 1 or cores[-1].shape[-1] != 1:
            raise ShapeError(
                f"{name}: boundary TT-ranks must be 1, got r_0={cores[0].shape[b]} and "
                f"r_d={cores[-1].shape[-1]} (core shapes {[tuple(c.shape) for c in cores]})"
            )
        for k in range(len(cores) - 1):
            if cores[k].shape[-1] != cores[k + 1].shape[b]:
                raise ShapeError(
                    f"{name}: TT-ranks do not chain: core {k} has shape {tuple(cores[k].shape)} "
                    f"(right rank {cores[k].shape[-1]}) but core {k + 1} has shape "
                    f"{tuple(cores[k + 1].shape)} (left rank {cores[k + 1].shape[b]})"
                )

    # ---------------------------------------------------------------------------------------- properties
    @property
    def tt_cores(self) -> tuple[torch.Tensor, ...]:
        """The cores, a tuple of tensors (t3f's name)."""
        return self._tt_cores

    @property
    def cores(self) -> tuple[torch.Tensor, ...]:
        """Alias of :attr:`tt_cores`."""
        return self._tt_cores

    @property
    def tt_ranks(self) -> tuple[int, ...]:
        """The TT-ranks ``(1, r_1, ..., r_{d-1}, 1)`` as ints."""
        b = self._batch_axes
        return tuple(int(c.shape[b]) for c in self._tt_cores) + (1,)

    @property
    def ranks(self) -> tuple[int, ...]:
        """Alias of :attr:`tt_ranks`."""
        return self.tt_ranks

    def get_tt_ranks(self) -> tuple[int, ...]:
        """t3f's getter: the same as :attr:`tt_ranks`."""
        return self.tt_ranks

    def is_tt_matrix(self) -> bool:
        """True for a TT-matrix (4-dim cores, 5-dim in a batch)."""
        return self._tt_cores[0].dim() == 4 + self._batch_axes

    def ndims(self) -> int:
        """The number of cores ``d`` (t3f's method)."""
        return len(self._tt_cores)

    @property
    def raw_shape(self) -> tuple[int, ...] | tuple[tuple[int, ...], tuple[int, ...]]:
        """Mode sizes: ``(n_1, ..., n_d)`` for a TT-tensor, ``((m_1..m_d), (n_1..n_d))`` for a TT-matrix."""
        b = self._batch_axes
        if self.is_tt_matrix():
            rows = tuple(int(c.shape[b + 1]) for c in self._tt_cores)
            cols = tuple(int(c.shape[b + 2]) for c in self._tt_cores)
            return (rows, cols)
        return tuple(int(c.shape[b + 1]) for c in self._tt_cores)

    def get_raw_shape(self) -> tuple[tuple[int, ...], ...]:
        """t3f's getter: a tuple of one mode tuple (tensor) or two (matrix: rows, columns)."""
        raw = self.raw_shape
        return raw if self.is_tt_matrix() else (raw,)  # type: ignore[return-value]

    @property
    def shape(self) -> torch.Size:
        """The dense shape (with the batch size first for a batch), as a ``torch.Size``; a plain tuple of Python
        ints where the number of entries exceeds int64 (a TT-matrix of ``4**40`` rows, a TT-tensor of 70 modes
        of size 2), which ``torch.Size`` cannot hold (``numel()`` wraps around: 0 for ``2**70``)."""
        if self.is_tt_matrix():
            rows, cols = self.get_raw_shape()
            dense: tuple[int, ...] = (math.prod(rows), math.prod(cols))
        else:
            dense = self.raw_shape  # type: ignore[assignment]
        full = self._batch_shape() + dense
        if math.prod(full) > torch.iinfo(torch.long).max:
            return full  # type: ignore[return-value]
        return torch.Size(full)

    def get_shape(self) -> torch.Size:
        """t3f's getter: the same as :attr:`shape`."""
        return self.shape

    def _batch_shape(self) -> tuple[int, ...]:
        return ()

    @property
    def dtype(self) -> torch.dtype:
        """The cores' dtype."""
        return self._tt_cores[0].dtype

    @property
    def device(self) -> torch.device:
        """The cores' device."""
        return self._tt_cores[0].device

    @property
    def requires_grad(self) -> bool:
        """True when any core requires grad."""
        return any(c.requires_grad for c in self._tt_cores)

    def is_variable(self) -> bool:
        """True when every core is an ``nn.Parameter`` (t3f's notion of a TT variable)."""
        return all(isinstance(c, torch.nn.Parameter) for c in self._tt_cores)

    def num_parameters(self) -> int:
        """The number of scalars stored in the cores (all batch elements together)."""
        return sum(c.numel() for c in self._tt_cores)

    # ------------------------------------------------------------------------------ torch-like conversions
    def _new(self, cores: Sequence[torch.Tensor]) -> Any:
        return type(self)(cores)

    def _same_values(self, new: Any) -> Any:
        """``new`` (the same tensor as ``self``) keeps ``self``'s ``projection_on`` while dtype and device are
        unchanged: a detached or cloned tangent vector is still tangent at that point."""
        where = getattr(self, "projection_on", None)
        if where is not None and new.dtype == self.dtype and new.device == self.device:
            new.projection_on = where
        return new

    def to(self, *args: Any, **kwargs: Any) -> Any:
        """Move or cast every core, as ``torch.Tensor.to``; returns a new object.

        A cast takes what :func:`tensortrain.cast` takes: a floating point or complex dtype of 16 bits or more,
        and a complex TT only to a complex dtype (the cores' real parts do not multiply out to the tensor's).
        """
        if args and isinstance(args[0], TensorTrainBase):  # (x.to(other): as torch's x.to(other_tensor))
            args = (args[0].device, args[0].dtype, *args[1:])
        # the target dtype, whichever form names it: dtype=, a dtype among the arguments, or a tensor's
        dtype = kwargs.get("dtype")
        for a in args if dtype is None else ():
            if isinstance(a, (torch.dtype, torch.Tensor)):
                dtype = a if isinstance(a, torch.dtype) else a.dtype
                break
        if dtype is not None:
            check_cast(self.dtype, dtype, f"{type(self).__name__}.to")
        return self._same_values(self._new([c.to(*args, **kwargs) for c in self._tt_cores]))

    def detach(self) -> Any:
        """A new object whose cores are detached from the autograd graph."""
        return self._same_values(self._new([c.detach() for c in self._tt_cores]))

    def clone(self) -> Any:
        """A new object with copies of the cores (gradients flow back to the originals)."""
        return self._same_values(self._new([c.clone() for c in self._tt_cores]))

    def requires_grad_(self, requires_grad: bool = True) -> Any:
        """Set ``requires_grad`` on every core in place; returns ``self``.

        Raises:
            RuntimeError: ``requires_grad=False`` with a core that autograd computed (not a leaf), as
                ``Tensor.requires_grad_``; no core is changed then.
        """
        if not requires_grad:
            # checked first: torch refuses it core by core, which left the cores before that one changed
            computed = [k for k, c in enumerate(self._tt_cores) if not c.is_leaf]
            if computed:
                raise RuntimeError(
                    f"requires_grad_(False): core {computed[0]} was computed by autograd (not a leaf), whose "
                    "requires_grad cannot be turned off; use .detach() for a TT object without gradients"
                )
        for c in self._tt_cores:
            c.requires_grad_(requires_grad)
        return self

    def cpu(self) -> Any:
        """The same object on the CPU."""
        return self.to("cpu")

    def cuda(self, device: torch.device | str | int | None = None) -> Any:
        """The same object on a CUDA device (the current one by default), as ``torch.Tensor.cuda``, which also
        refuses a device of another type."""
        if device is None:
            return self.to("cuda")
        target = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        if target.type != "cuda":
            raise ValueError(f"cuda: expected a CUDA device, got {target}")
        return self.to(target)

    def double(self) -> Any:
        """``self.to(torch.float64)`` (``complex128`` for a complex TT)."""
        return self.to(torch.complex128 if self.dtype.is_complex else torch.float64)

    def float(self) -> Any:
        """``self.to(torch.float32)`` (``complex64`` for a complex TT)."""
        return self.to(torch.complex64 if self.dtype.is_complex else torch.float32)

    def half(self) -> Any:
        """``self.to(torch.float16)``."""
        return self.to(torch.float16)

    def bfloat16(self) -> Any:
        """``self.to(torch.bfloat16)``."""
        return self.to(torch.bfloat16)

    # ------------------------------------------------------------------------------------------- printing
    def _describe(self, plural: bool) -> str:
        variable = " variable" if self.is_variable() else ""
        ranks = _fmt(self.tt_ranks)
        if self.is_tt_matrix():
            rows, cols = self.get_raw_shape()
            kind = (
                ("TT-matrix variables" if variable else "TT-matrices") if plural else ("TT-Matrix" + variable)
            )
            size = f"{math.prod(rows)} x {math.prod(cols)}"
            return (
                f"{kind} of size {size}, underlying tensor shape: {_fmt(rows)} x {_fmt(cols)}, "
                f"TT-ranks: {ranks}"
            )
        kind = ("Tensor Train" + variable + "s") if plural else ("Tensor Train" + variable)
        return f"{kind} of shape {_fmt(self.raw_shape)}, TT-ranks: {ranks}"  # type: ignore[arg-type]

    def __str__(self) -> str:
        return "A " + self._describe(plural=False)

    def __repr__(self) -> str:
        # t3f's text, plus what it does not show when it is not the default (as torch.Tensor's repr does)
        extra = []
        if self.dtype != torch.get_default_dtype():
            extra.append(f"dtype={self.dtype}")
        if self.device.type != "cpu":
            extra.append(f"device='{self.device}'")
        if any(c.requires_grad for c in self._tt_cores):
            extra.append("requires_grad=True")
        return str(self) + (f" ({', '.join(extra)})" if extra else "")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"a {type(self).__name__} is not an array: tt.full(x) gives the dense tensor (tt.full(x).numpy())"
        )

    # ------------------------------------------------------------------------------------------ operators
    # Sugar only: each algorithm lives in one function of tensortrain.ops (imported lazily, since ops sits
    # below this module in the import order).
    def __add__(self, other: Any) -> Any:
        from . import ops

        return ops.add(self, other)

    def __radd__(self, other: Any) -> Any:
        from . import ops

        if type(other) is int and other == 0:  # sum(list_of_tts) starts from 0
            return self
        return ops.add(other, self)

    def __sub__(self, other: Any) -> Any:
        from . import ops

        return ops.subtract(self, other)

    def __rsub__(self, other: Any) -> Any:
        from . import ops

        return ops.subtract(other, self)

    def __pos__(self) -> Any:
        return self

    def __neg__(self) -> Any:
        from . import ops

        return ops.multiply(self, -1.0)

    def __mul__(self, other: Any) -> Any:
        from . import ops

        return ops.multiply(self, other)

    def __rmul__(self, other: Any) -> Any:
        from . import ops

        return ops.multiply(other, self)

    def __truediv__(self, other: Any) -> Any:
        from . import ops

        if isinstance(other, TensorTrainBase):
            raise TypeError("dividing by a TT object is not supported (it has no TT form of fixed rank)")
        if isinstance(other, torch.Tensor):
            if other.dim() != 0 or other.dtype == torch.bool:
                return ops.multiply(self, other)  # refused there, with multiply's message
            # the reciprocal at the cores' precision at least (a float32 0-dim tensor divided float64 cores
            # with 1e-8 relative error, a float16 one with 2e-4)
            return ops.multiply(
                self, torch.reciprocal(other.to(torch.promote_types(other.dtype, self.dtype)))
            )
        if isinstance(other, (torch.SymFloat, torch.SymInt)):  # (a number that varies while compiling)
            return ops.multiply(self, 1 / other)
        other = plain_scalar(other)  # NumPy scalars as Python numbers (float64), as multiply reads them
        if isinstance(other, bool) or not isinstance(other, numbers.Number):
            return NotImplemented  # Python's TypeError then names both operand types
        # x / 0 is x * inf, as torch divides, not Python's ZeroDivisionError; but the inf sits in the cores, so the
        # entries come out NaN wherever a core product sums terms of both signs (a TT cannot hold x / 0 itself)
        if other == 0:
            if isinstance(other, complex):
                return ops.multiply(self, complex(math.nan, math.nan))
            return ops.multiply(self, math.copysign(math.inf, float(other)))  # type: ignore[arg-type]
        return ops.multiply(self, 1 / other)  # type: ignore[operator]

    def __matmul__(self, other: Any) -> Any:
        from . import ops

        return ops.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Any:
        from . import ops

        return ops.matmul(other, self)

    def __getattr__(self, name: str) -> Any:
        # Only for names not found otherwise: Tensor methods that nn.init and copied nn.Linear code call on a
        # layer's .weight (xavier_uniform_ calls .dim(), zeros_ .zero_()) get the hint __torch_function__ gives
        if name in _TENSOR_ONLY:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}: a TT object (e.g. the .weight of a "
                "TTLinear or TTEmbedding layer) is not a torch.Tensor; initialize a TT layer with its init= "
                "argument or reset_parameters(), use tt.full(w) or TTLinear.dense_weight() for a dense tensor and "
                "tt.transpose(w) for the transpose"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        """``dense @ tt``, ``torch.matmul(dense, tt)`` and ``dense.matmul(tt)`` (operands by position or by name)
        go to :func:`tensortrain.matmul`.

        Without this, ``Tensor.__matmul__`` first fails inside torch and only then falls back to
        :meth:`__rmatmul__` (~70 us per call). Any other torch function given a TT object raises a
        ``TypeError`` that names the function: the usual cause is code that reads a TT layer's ``.weight``
        outside the layer's own forward (``F.linear(x, layer.weight)``, a head tied through an embedding's
        weight), where torch's own message ("Multiple dispatch failed ... returned NotImplemented") does not
        say what to do. Operators are unaffected: torch turns a ``TypeError`` raised under ``dense + tt``,
        ``dense * tt``, ... into ``NotImplemented``, so Python still tries ``tt.__radd__`` and the like.

        Under ``torch.compile`` the graph breaks here and Python runs the operator: dynamo hands ``tt @ x`` to
        this method as ``Tensor.matmul(x, tt)``, the very call ``x @ tt`` makes, so the operand order is lost
        (``tt @ x`` silently gave ``x @ tt`` for a square TT-matrix). ``torch.matmul(x, tt)`` arrives as itself,
        in order, and traces; so do ``tt.matmul`` and ``tt.multiply``.

        Raises:
            TypeError: any torch function other than ``matmul`` given a TT object; ``matmul`` with ``out=``.
        """
        if func is not torch.matmul and torch.compiler.is_compiling():
            torch._dynamo.graph_break()  # (fullgraph=True: an error, not a wrong product)
        if func in _MATMULS:
            kw = dict(kwargs or {})
            if kw.pop("out", None) is not None:
                raise TypeError(
                    "torch.matmul(..., out=) with a TT object: the product is a new tensor (or TT object); "
                    "copy it into out yourself: out.copy_(torch.matmul(a, b))"
                )
            # torch.matmul(input=a, other=b), a.matmul(other=b): the operands by name, in torch's order
            operands = [*args, *(kw.pop(key) for key in ("input", "other") if key in kw)]
            if not kw and len(operands) == 2:
                from . import ops

                return ops.matmul(*operands)
        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
        raise TypeError(
            f"torch function {name!r} got a {cls.__name__}, a TT object (e.g. the .weight of a TTLinear or "
            "TTEmbedding layer), which is not a torch.Tensor: TT layers must be called as modules "
            "(layer(x)), not through their .weight; tt.full(w) or TTLinear.dense_weight() gives a dense "
            "tensor"
        )


class TensorTrain(TensorTrainBase):
    """A TT-tensor or TT-matrix: an immutable value over a tuple of cores.

    Args:
        tt_cores: a sequence of ``d`` tensors, all of one dtype and device: shapes ``(r_{k-1}, n_k, r_k)``
            for a TT-tensor or ``(r_{k-1}, m_k, n_k, r_k)`` for a TT-matrix, with ``r_0 = r_d = 1``.

    Raises:
        ShapeError: ranks that do not chain, boundary ranks other than 1, mixed core dims, dtypes or
            devices, empty dims.
        TypeError: cores that are not tensors, or integer/bool cores.

    Example:
        >>> import torch, tensortrain as tt
        >>> a = tt.TensorTrain([torch.ones(1, 3, 2), torch.ones(2, 4, 2), torch.ones(2, 5, 1)])
        >>> print(a)
        A Tensor Train of shape (3, 4, 5), TT-ranks: (1, 2, 2, 1)
    """

    def __str__(self) -> str:
        return "A " + self._describe(plural=False)

    def __getitem__(self, index: Any) -> Any:
        from . import ops

        return ops.getitem(self, index)

    def __len__(self) -> int:
        # (torch.as_tensor / torch.tensor probe len() first: say what to do instead of "has no len()")
        raise TypeError(
            "a TensorTrain has no length: it is not a sequence; tt.full(x) gives the dense tensor (x.shape its "
            "shape)"
        )

    def __bool__(self) -> bool:  # (with __len__ defined, truth testing would call it)
        return True

    def __iter__(self) -> Iterator[Any]:
        # without this, Python's legacy protocol would iterate x[0], x[1], ... over the first mode until an
        # IndexError, while len(x) fails
        raise TypeError(
            "a TensorTrain is not a sequence: index its modes (x[i]) or use tt.full(x); a TensorTrainBatch "
            "iterates over its elements"
        )


class TensorTrainBatch(TensorTrainBase):
    """A batch of ``B`` TT objects of equal shapes and ranks: every core has a leading batch axis.

    Core shapes: ``(B, r_{k-1}, n_k, r_k)`` (tensors) or ``(B, r_{k-1}, m_k, n_k, r_k)`` (matrices).
    ``batch[i]`` is a :class:`TensorTrain`, ``batch[i:j]`` and ``batch[index_tensor]`` are batches,
    ``len(batch) == batch.batch_size``, and iterating yields the elements.

    Example:
        >>> import torch, tensortrain as tt
        >>> b = tt.TensorTrainBatch([torch.ones(5, 1, 2, 2), torch.ones(5, 2, 3, 2), torch.ones(5, 2, 4, 1)])
        >>> print(b)
        A 5 element batch of Tensor Trains of shape (2, 3, 4), TT-ranks: (1, 2, 2, 1)
    """

    _batch_axes = 1

    @property
    def batch_size(self) -> int:
        """The number of TT objects in the batch."""
        return int(self._tt_cores[0].shape[0])

    def _batch_shape(self) -> tuple[int, ...]:
        return (self.batch_size,)

    def __len__(self) -> int:
        return self.batch_size

    def __iter__(self) -> Iterator[TensorTrain]:
        for i in range(self.batch_size):
            yield self[i]

    def __str__(self) -> str:
        return f"A {self.batch_size} element batch of " + self._describe(plural=True)

    def __getitem__(self, index: Any) -> Any:
        """``int`` -> TensorTrain; slice, list or index tensor -> TensorTrainBatch; a tuple indexes modes too.

        An int may be a numpy integer or a 0-dim integer tensor; TT-matrix batches take batch indices only.
        """
        from . import indexing

        if isinstance(index, tuple) or index is Ellipsis:
            items = list(index) if isinstance(index, tuple) else [index]
            if self.is_tt_matrix():
                # batch indices only: (i,), (i, ...), ... and () index the batch (or nothing), as numpy reads
                # them; anything reaching a mode is refused by getitem with its message
                if sum(it is Ellipsis for it in items) > 1:
                    raise IndexError("an index can only have a single ellipsis ('...')")
                while items and items[-1] is Ellipsis:
                    items.pop()
                if len(items) <= 1 and not any(it is Ellipsis for it in items):
                    return self if not items else self[items[0]]
                return indexing.getitem(self, index)
            picked = indexing.getitem(self, index)
            # the first item indexes the batch (or is an ellipsis); when every other one keeps its modes whole, the
            # elements picked are still tangent vectors at the same point
            if all(it is Ellipsis or (isinstance(it, slice) and it == slice(None)) for it in items[1:]):
                return self._same_values(picked)
            return picked
        cores, batch = indexing.index_batch(list(self._tt_cores), index, self.batch_size)
        # elements of a batch of tangent vectors are tangent vectors at the same point
        return self._same_values(TensorTrainBatch(cores) if batch else TensorTrain([c[0] for c in cores]))
