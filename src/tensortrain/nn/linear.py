"""``TTLinear``: a drop-in ``nn.Linear`` whose weight is a TT-matrix.

Symbols: ``d`` number of cores, ``m_k`` output modes, ``n_k`` input modes, ``r_k`` TT-ranks.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .. import contraction
from .._transforms import full_precision, transforms_active
from ..contraction import STRATEGIES, ContractionPlan, Strategy
from ..contraction import plan as contraction_plan
from ..contraction.checks import check_max_saved
from ..errors import ShapeError, fx_hint
from ..operands import as_flag, check_strided
from ..shapes import as_int, is_finite, max_tt_ranks, svd_tt_ranks
from ..tensor_train import CORE_DTYPES, TensorTrain, dtensor_hint, is_dtensor
from . import functional as F
from .base import TTModule, assign_cores_, cast_back, check_factory_dtype, check_loadable, svd_ready
from .dims import check_features, check_rank_form, resolve_dims
from .init import InitScheme, dense_variance, tt_normal_

__all__ = ["TTLinear"]

# ParameterList keys of the cores, in order (forward compares the registry with them)
_CORE_KEYS = tuple(str(k) for k in range(128))


def _bias_values(bias: Any, fn: str, device: torch.device) -> torch.Tensor | None:
    """A bias given as a tensor, or as an array or list of numbers (t3f's ``set_weights`` takes NumPy arrays),
    made on ``device`` (the TT-matrix's, not the default device): the layer casts it to its own dtype."""
    if bias is None or isinstance(bias, torch.Tensor):
        return bias
    try:
        values = torch.as_tensor(bias, device=device)
    except (TypeError, ValueError, RuntimeError):
        values = None
    if values is None or values.dtype == torch.bool:
        raise TypeError(f"{fn}: bias must be a tensor or an array of numbers, got {type(bias).__name__}")
    if values.is_floating_point() or values.is_complex():
        # Python numbers are read in the default dtype (float32, complex64), which rounded a float64 layer's
        # bias before its cast: read them in double precision, exact for any source (NumPy arrays too)
        double = torch.complex128 if values.is_complex() else torch.float64
        values = torch.as_tensor(bias, dtype=double, device=device)
    return values


def as_linear(m: nn.LazyLinear) -> nn.Linear:
    """An ``nn.Linear`` over a materialized ``LazyLinear``'s own parameters (no copy): its ``in_features`` is
    still 0 until a first forward sets it from the input (``load_state_dict`` materializes it without one)."""
    lin = nn.Linear(1, 1, bias=False, device="meta")
    lin.in_features, lin.out_features = int(m.weight.shape[1]), int(m.weight.shape[0])
    # (materialized: plain Parameters, whatever the annotations say)
    lin.weight, lin.bias = m.weight, m.bias  # type: ignore[assignment]
    return lin


class TTLinear(TTModule):
    r"""A linear layer ``y = x W^T + b`` whose ``out x in`` weight ``W`` is a TT-matrix (Novikov et al. 2015).

    A drop-in for ``nn.Linear``: same call semantics on inputs of shape ``(..., in_features)``, same weight
    orientation. The cores are ``nn.Parameter``\ s in the ``nn.ParameterList`` :attr:`cores`, core ``k`` of
    shape ``(r_{k-1}, out_dims[k], in_dims[k], r_k)``; :attr:`weight` is a :class:`~tensortrain.TensorTrain`
    view of them. The forward pass runs the contraction plan its cost model prices lowest for the batch
    (:mod:`tensortrain.contraction`): sweeps over merged core groups, which never build ``W``, or, for large
    batches and ranks, ``W`` built from its two halves and one GEMM; :meth:`plan` shows the choice.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        tt_rank: an int for every inner bond, or the full ``d + 1`` tuple ``(1, r_1, ..., r_{d-1}, 1)`` (``d - 1``
            inner ranks, as t3f takes them, only with dims given: with automatic ones the length alone says ``d``).
            Ranks above the largest useful ones are clipped to them, as TT-SVD clips them
            (:func:`tensortrain.svd_tt_ranks` of ``m_k n_k``): they would only add redundant parameters.
        in_dims: the input modes ``n_k`` (multiply to ``in_features``); factored automatically if None.
        out_dims: the output modes ``m_k`` (multiply to ``out_features``); factored automatically if None.
        bias: whether to learn an additive bias.
        init: the dense scheme whose entry variance the full weight gets: ``"linear"`` (``nn.Linear``'s
            default, variance ``1 / (3 in)``), ``"glorot"`` (``2 / (in + out)``), ``"he"`` (``2 / in``) or
            ``"lecun"`` (``1 / in``). Cores are normal with per-core std chosen for that variance.
        bias_init: a constant for every bias entry (the t3f tutorial uses ``1e-3``); None: ``nn.Linear``'s
            ``U(-1/sqrt(in), 1/sqrt(in))``.
        pad: whether the TT-matrix may be larger than ``out x in`` (see Padding below). None (the default):
            automatic dims are padded where a size has only lopsided exact factors, given dims must multiply
            to the sizes; True: given dims may also multiply to more; False: never (automatic dims exact, as
            :func:`tensortrain.auto_shape` gives them).
        device: the device of the parameters.
        dtype: the dtype of the parameters.

    Attributes:
        cores: the TT cores (``nn.ParameterList``).
        bias: the bias of shape ``(out_features,)``, or None.
        strategy: the contraction strategy of every forward: ``"auto"`` (the cost model's cheapest plan for
            each batch size, the default), ``"tune"`` (the fastest of the model's candidates, timed on this
            machine the first time each batch-size bucket is seen; with ``max_saved_bytes``, each training
            batch size) or one of
            :data:`tensortrain.contraction.STRATEGIES`. Settable; not part of the state dict.
        max_saved_bytes: None (the default: the fastest plan) or a byte count: training forwards take the
            fastest plan that keeps at most this many bytes of activations for backward, or the one keeping
            least if none fits (:meth:`plan` shows ``activations kept``). The cost model prices time, and a fast
            sweep can keep several times the dense weight at large batches; ``in_features * out_features * 4``
            keeps no more than a float32 dense weight. Bounded plans are made per batch size (not per
            power-of-two bucket) and counted in the cores' dtype (under autocast the kept copies are in the lower
            precision, plus autocast's copy of the input). Under ``torch.compile`` and ``torch.func`` a sweep
            planned to recompute its states runs as a plain one (the compiler decides what a compiled graph
            keeps). Settable; not part of the state dict.

    Padding: when the dims multiply to more than the sizes (``N' = prod(in_dims) > in_features`` or
    ``M' = prod(out_dims) > out_features``), the TT-matrix is ``M' x N'``: the input is zero-padded to ``N'``
    columns and the output keeps the first ``out_features``, so the layer's weight is the top-left
    ``out x in`` block of the TT-matrix (:meth:`dense_weight`). Automatic dims of a 768 -> 30522 head
    (``30522 = 2 * 3 * 5087``) are out ``(6, 6, 6, 6, 6, 4)`` (31,104 rows), not ``(5087, 3, 2, 1, 1, 1)``.

    Raises:
        ShapeError: dims that do not multiply to the sizes (with ``pad=True``: to less), dims of different
            lengths, ranks below 1.
        TypeError: ``pad`` not None or a bool.
        ValueError: an unknown ``init``.

    Shape:
        - Input: ``(*, in_features)``.
        - Output: ``(*, out_features)``.

    Example:
        >>> import torch, tensortrain as tt
        >>> layer = tt.nn.TTLinear(784, 625, tt_rank=4, in_dims=(7, 4, 7, 4), out_dims=(5, 5, 5, 5))
        >>> sum(p.numel() for p in layer.parameters())
        1725
        >>> layer(torch.randn(64, 784)).shape
        torch.Size([64, 625])
    """

    in_features: int
    out_features: int
    in_dims: tuple[int, ...]
    out_dims: tuple[int, ...]
    # a class default: layers pickled before the attribute existed load as "auto"
    _strategy: Strategy = "auto"
    _max_saved: int | None = None
    # padding of the input columns and output rows (see the class docstring); class defaults for old pickles
    _in_pad: int = 0
    _out_pad: int = 0

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        tt_rank: int | Sequence[int],
        in_dims: Sequence[int] | None = None,
        out_dims: Sequence[int] | None = None,
        bias: bool = True,
        init: InitScheme = "linear",
        bias_init: float | None = None,
        pad: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_factory_dtype(dtype, "TTLinear")
        if isinstance(bias, torch.Tensor):  # (torch's "Boolean value of Tensor ... is ambiguous" otherwise)
            raise TypeError(
                "TTLinear: bias is a flag (True or False); for a layer with given bias values use "
                "TTLinear.from_tt(tt_matrix, bias) or layer.load_tt_(tt_matrix, bias)"
            )
        bias = as_flag(bias, "TTLinear", "bias")
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        self.in_features = check_features("in_features", in_features)
        self.out_features = check_features("out_features", out_features)
        self.in_dims, self.out_dims = resolve_dims(in_features, out_features, in_dims, out_dims, pad)
        self._in_pad = math.prod(self.in_dims) - self.in_features
        self._out_pad = math.prod(self.out_dims) - self.out_features
        dense_variance(init, in_features, out_features)  # validates init before any allocation
        self.init = init
        if bias_init is not None and (isinstance(bias_init, bool) or not isinstance(bias_init, numbers.Real)):
            raise TypeError(f"TTLinear: bias_init must be a number or None, got {bias_init!r}")
        if bias_init is not None and not is_finite(bias_init):  # (every output would be NaN or inf)
            raise ValueError(f"TTLinear: bias_init must be finite, got {bias_init!r}")
        self.bias_init = bias_init
        d = len(self.in_dims)
        auto = in_dims is None and out_dims is None
        dims = {"in_dims": self.in_dims, "out_dims": self.out_dims}
        tt_rank = check_rank_form(tt_rank, dims, auto, "TTLinear", "tt_rank")
        ranks = svd_tt_ranks(tt_rank, [m * n for m, n in zip(self.out_dims, self.in_dims, strict=True)])
        self.cores = nn.ParameterList(
            nn.Parameter(
                torch.empty(ranks[k], self.out_dims[k], self.in_dims[k], ranks[k + 1], **factory_kwargs)
            )
            for k in range(d)
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------- state
    def reset_parameters(self) -> None:
        """Re-draw the cores (variance of the ``init`` scheme) and the bias (``bias_init`` or nn.Linear's)."""
        tt_normal_(list(self.cores), dense_variance(self.init, self.in_features, self.out_features))
        self._reset_bias()

    def _reset_bias(self) -> None:
        if self.bias is not None:
            with torch.no_grad():
                if self.bias_init is None:
                    bound = 1.0 / math.sqrt(self.in_features)
                    nn.init.uniform_(self.bias, -bound, bound)
                else:
                    self.bias.fill_(float(self.bias_init))  # (an int past int64 overflowed fill_)

    @property
    def strategy(self) -> Strategy:
        """The contraction strategy every forward uses (``"auto"``: the cost model's choice per batch size;
        ``"tune"``: timed once per batch-size bucket, see :func:`tensortrain.contraction.linear`)."""
        return self._strategy

    @strategy.setter
    def strategy(self, value: Strategy) -> None:
        if not isinstance(value, str) or value not in STRATEGIES:
            raise ValueError(
                f"TTLinear: unknown strategy {value!r}; valid strategies are {', '.join(STRATEGIES)}"
            )
        self._strategy = value

    @property
    def max_saved_bytes(self) -> int | None:
        """Bytes of activations a training forward may keep for backward (None: no limit, the fastest plan)."""
        return self._max_saved

    @max_saved_bytes.setter
    def max_saved_bytes(self, value: int | None) -> None:
        self._max_saved = check_max_saved(value, "TTLinear")

    @property
    def weight(self) -> TensorTrain:
        """The weight as a TT-matrix :class:`~tensortrain.TensorTrain` of shape ``out x in`` (a view of
        :attr:`cores`, as the forward uses them: pruned cores masked; gradients flow back to them). A padded
        layer's is ``prod(out_dims) x prod(in_dims)``, whose top-left ``out x in`` block is the weight."""
        return TensorTrain(self._current_cores())

    def _sizes(self) -> dict[str, int]:
        """``{"in_features": ..., "out_features": ...}`` (see :meth:`TTModule._sizes`)."""
        return {"in_features": self.in_features, "out_features": self.out_features}

    @property
    def padded(self) -> bool:
        """Whether the dims multiply to more than the sizes (the input is zero-padded, the output cut)."""
        return bool(self._in_pad or self._out_pad)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Apply ``input @ W.T + bias`` through :func:`tensortrain.nn.functional.tt_linear`."""
        # nn.Module's attribute lookup (~1 us each) and ParameterList's iterator (~1.5 us per core) are a tenth
        # of a batch-1 forward: read the registries directly
        # The registries are the cores only while nothing reroutes them: torch.nn.utils.prune renames core "1"
        # to "1_orig" (the masked core is a plain attribute) and parametrize moves a tensor out of the registry.
        # Forward pre-hooks on the ParameterList (prune's, or a user's that clamps the cores) take the path that
        # runs them (self.weight), as TTEmbedding's forward and the compiled forward do.
        cores = self._modules["cores"]
        registry = cores._parameters  # type: ignore[union-attr]
        hooked = bool(cores._forward_pre_hooks)  # type: ignore[union-attr]
        if (
            tuple(registry) == _CORE_KEYS[: len(cores)]  # type: ignore[arg-type]
            and "bias" in self._parameters
            and not hooked
            and not torch.compiler.is_compiling()
        ):  # (_plain_registries inline: a method call is ~1% of a batch-1 forward)
            bias = self._parameters["bias"]
            cores_now = tuple(registry.values())
            if self._in_pad or self._out_pad:
                return self._padded_forward(input, cores_now, bias, self._cache)  # type: ignore[arg-type]
            return F.linear_cores(input, cores_now, bias, self._cache, self._strategy, self._max_saved)  # type: ignore[arg-type]
        if not hooked and not torch.compiler.is_compiling() and self._plain_registries(cores, registry):
            return self.forward(input)  # (the registry's order was restored: the fast path now)
        if self._in_pad or self._out_pad:
            return self._padded_forward(input, self.weight.tt_cores, self.bias, None)
        return F.linear_cores(input, self.weight.tt_cores, self.bias, None, self._strategy, self._max_saved)

    def _plain_registries(self, cores: Any, registry: dict) -> bool:
        """Whether the registries hold the cores and the bias as they are (no prune or parametrize rerouting):
        then forward reads them directly and keeps merged cores between inference calls."""
        keys = _CORE_KEYS[: len(cores)]
        if tuple(registry) != keys and len(registry) == len(keys) and set(registry) == set(keys):
            # prune.remove and parametrize.remove_parametrizations register the core again, at the end of the
            # registry ('0', '2', '3', '1'): restore the order (state_dict's too) rather than never cache again.
            # A new dict swapped in whole: a forward in another thread sees the old order or the new, never a
            # dict with a key popped out
            registry = type(registry)((k, registry[k]) for k in keys)
            object.__setattr__(cores, "_parameters", registry)
        return tuple(registry) == keys and "bias" in self._parameters

    def _padded_forward(
        self,
        input: torch.Tensor,
        cores: tuple[torch.Tensor, ...],
        bias: torch.Tensor | None,
        cache: dict | None,
    ) -> torch.Tensor:
        """The forward of a padded layer: input zero-padded to ``prod(in_dims)`` columns, the first
        ``out_features`` outputs kept, then the bias (one copy of the input and one of the output more than an
        unpadded layer)."""
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"TTLinear: input must be a Tensor, got {type(input).__name__}{fx_hint(input)}")
        check_strided("TTLinear", "input", input)  # (before the pad, which fails on sparse ones)
        if input.dim() == 0 or input.shape[-1] != self.in_features:
            got = (
                "a scalar" if input.dim() == 0 else f"{input.shape[-1]} features (shape {tuple(input.shape)})"
            )
            raise ShapeError(f"TTLinear: input has {got} but in_features={self.in_features}")
        if cores[0].dtype not in CORE_DTYPES:  # (before the pad: float8_e8m0fnu cannot hold its zeros)
            F.check_core_dtype("TTLinear", cores)
        x = torch.nn.functional.pad(input, (0, self._in_pad)) if self._in_pad else input
        limit = self._max_saved
        if limit is not None and self._in_pad and not transforms_active():
            # the padded copy is kept for backward in place of the input: the bound counts it (not while tracing,
            # where the batch is a symbol and the compiler decides what is kept)
            limit = max(0, limit - x.numel() * x.element_size())
        y = F.linear_cores(x, cores, None, cache, self._strategy, limit)
        if self._out_pad:
            # (narrow on dim -1, not y[..., :k]: a jit trace records the slice's dim as a number, fixing the trace
            # to this input's number of dimensions)
            y = y.narrow(-1, 0, self.out_features)
        if bias is not None:
            contraction.check_bias("TTLinear", bias, self.out_features, cores[0])
            # under autocast y is in the lower precision, as nn.Linear's output is: add the bias in that dtype
            return y + (bias if bias.dtype == y.dtype else bias.to(y.dtype))
        return y.contiguous()

    def plan(
        self, batch_size: int, *, requires_grad: bool | None = None, input_requires_grad: bool = True
    ) -> ContractionPlan:
        """The contraction plan :meth:`forward` uses for ``batch_size`` rows, with its estimated FLOPs.

        Args:
            batch_size: rows of the input (all leading dims flattened).
            requires_grad: price backward too; default: whether the cores require grad and grad mode is on.
            input_requires_grad: when training, whether the input needs a gradient (False for a first layer:
                its backward then skips that product, and the plan may differ). The cores' need is read from
                them (frozen cores: the input's gradient only; then this must be True). With only some cores
                frozen the plan is priced as if every core trained (its backward FLOPs and kept bytes can be
                fewer than reported).

        Returns:
            A :class:`~tensortrain.contraction.ContractionPlan`; ``print(layer.plan(1024))`` reads it out. A
            padded layer's ``saved_bytes`` include the zero-padded copy of the input where training keeps it in
            place of the input (``max_saved_bytes`` counts it whether kept or not). To
            force another kind of plan set :attr:`strategy` (or call ``tt.contraction.linear(x, layer.weight,
            layer.bias, strategy=...)``, for a layer that is not :attr:`padded`).

        Example:
            >>> import torch, tensortrain as tt
            >>> layer = tt.nn.TTLinear(784, 625, tt_rank=4)
            >>> layer.plan(1024, requires_grad=False).kind  # doctest: +SKIP
            'sweep'
        """
        weight = self.weight
        limit, padded = self._max_saved, 0
        rows = as_int(batch_size)  # (checked by contraction_plan)
        if self._in_pad and rows is not None and rows >= 0:
            # training keeps the zero-padded copy of the input in place of the input: counted, and bounded
            padded = rows * math.prod(self.in_dims) * weight.tt_cores[0].element_size()
            limit = None if limit is None else max(0, limit - padded)
        # without gradients the layer keeps its merged core groups between calls (see clear_cache), unless
        # prune or parametrize reroute its registries (forward then plans without them)
        cores = self._modules["cores"]
        p = contraction_plan(
            weight,
            batch_size,
            requires_grad=requires_grad,
            strategy=self._strategy,
            cached_merges=self._plain_registries(cores, cores._parameters),  # type: ignore[union-attr]
            max_saved_bytes=limit,
            input_requires_grad=input_requires_grad,
            cores_require_grad=any(c.requires_grad for c in weight.tt_cores),
        )
        # (only where backward reads the padded copy itself: not for frozen cores, nor where a folded first step
        # keeps a copy of it instead, which the plan counts)
        kept = padded and p._keeps_input()
        return dataclasses.replace(p, saved_bytes=p.saved_bytes + padded) if kept else p

    # ------------------------------------------------------------------------------------- conversions
    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        max_tt_rank: int | Sequence[int] | None = None,
        epsilon: float | None = None,
        in_dims: Sequence[int] | None = None,
        out_dims: Sequence[int] | None = None,
        pad: bool | None = None,
    ) -> TTLinear:
        """A TTLinear whose weight is the TT-SVD of ``linear.weight``; the bias is copied.

        Args:
            linear: an ``nn.Linear`` (its device and dtype are kept; half precision weights are decomposed
                in float32).
            max_tt_rank: cap on the TT-ranks (an int, or one per bond as ``tt_rank`` in the constructor). With
                neither this nor ``epsilon`` the decomposition is exact (maximal useful ranks).
            epsilon: relative Frobenius error target of the weight (Oseledets 2011 splits it over d-1 SVDs), a
                number >= 0 (0 asks for no error: the exact ranks; 1 or more allows rank 1 everywhere).
            in_dims: input modes (default: factored automatically).
            out_dims: output modes (default: factored automatically).
            pad: as in :class:`TTLinear`. A padded layer's TT-SVD decomposes the weight with zero rows and
                columns appended; ``epsilon`` then bounds the error on the whole padded matrix, which has the
                weight's norm, so the weight's own relative error is at most ``epsilon`` too.

        Returns:
            A new TTLinear on ``linear``'s device and dtype.

        Raises:
            TypeError: ``linear`` is not an ``nn.Linear``.
            ShapeError: dims that do not multiply to the layer's sizes (with ``pad=True``: to less), or an empty
                layer (a size of 0).

        Complexity: the TT-SVD, O(d r^2 max_k(M N)) ~ one SVD-ish pass over the ``out x in`` weight.

        Example:
            >>> import torch, tensortrain as tt
            >>> dense = torch.nn.Linear(784, 625)
            >>> layer = tt.nn.TTLinear.from_linear(dense, max_tt_rank=16, in_dims=(7, 4, 7, 4), out_dims=(5,) * 4)
            >>> layer.tt_ranks
            (1, 16, 16, 16, 1)
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"TTLinear.from_linear expects nn.Linear, got {type(linear).__name__}")
        from ..decompositions import check_budget, to_tt_matrix

        if isinstance(linear.weight, nn.parameter.UninitializedParameter):
            raise ValueError(
                "TTLinear.from_linear: the LazyLinear has not been initialized yet; run a forward pass first"
            )
        if isinstance(
            linear, nn.LazyLinear
        ):  # (materialized, by load_state_dict: no forward has set in_features)
            linear = as_linear(linear)
        if tuple(linear.weight.shape) != (linear.out_features, linear.in_features):
            raise ValueError(
                f"TTLinear.from_linear: the weight has shape {tuple(linear.weight.shape)} but out_features="
                f"{linear.out_features}, in_features={linear.in_features} (a weight replaced by hand?); set the "
                "sizes to the weight's"
            )
        if linear.in_features < 1 or linear.out_features < 1:  # (legal in torch; no modes to factor it into)
            raise ShapeError(
                f"TTLinear.from_linear: the nn.Linear is empty (in_features={linear.in_features}, out_features="
                f"{linear.out_features}); a TT layer's sizes must be >= 1 (tt.compress keeps empty layers dense)"
            )
        given_in, given_out = in_dims, out_dims
        in_dims, out_dims = resolve_dims(linear.in_features, linear.out_features, in_dims, out_dims, pad)
        w = linear.weight.detach()
        if is_dtensor(w):  # (a sharded nn.Linear: to_tt_matrix would name its own input)
            raise TypeError(dtensor_hint("TTLinear.from_linear", "the weight"))
        modes = [m * n for m, n in zip(out_dims, in_dims, strict=True)]
        auto = given_in is None and given_out is None
        dims = {"in_dims": in_dims, "out_dims": out_dims}
        max_tt_rank = check_rank_form(max_tt_rank, dims, auto, "TTLinear.from_linear", "max_tt_rank")
        check_budget(max_tt_rank, epsilon, modes, "TTLinear.from_linear", w)
        pad_rows, pad_cols = math.prod(out_dims) - w.shape[0], math.prod(in_dims) - w.shape[1]
        if pad_rows or pad_cols:
            # rows and columns the layer never reads; zeros keep the matrix's norm (so epsilon's meaning)
            w = torch.nn.functional.pad(w, (0, pad_cols, 0, pad_rows))
        if max_tt_rank is None and epsilon is None:
            max_tt_rank = max(max_tt_ranks(modes))
        tt = F._check_tt_matrix(
            "TTLinear.from_linear",
            to_tt_matrix(
                svd_ready(w), [list(out_dims), list(in_dims)], max_tt_rank=max_tt_rank, epsilon=epsilon
            ),
        )
        tt = cast_back(tt, w.dtype, "TTLinear.from_linear")
        bias = None if linear.bias is None else linear.bias.detach()
        layer = cls.from_tt(
            tt,
            bias=bias,
            has_bias=linear.bias is not None,
            in_features=linear.in_features,
            out_features=linear.out_features,
        )
        # a frozen layer stays frozen (e.g. a compressed backbone whose head alone is fine-tuned)
        layer.cores.requires_grad_(linear.weight.requires_grad)
        if layer.bias is not None and linear.bias is not None:
            layer.bias.requires_grad_(linear.bias.requires_grad)
        return layer

    @classmethod
    def from_tt(
        cls,
        tt_matrix: TensorTrain,
        bias: torch.Tensor | None = None,
        *,
        has_bias: bool | None = None,
        in_features: int | None = None,
        out_features: int | None = None,
    ) -> TTLinear:
        """A TTLinear whose weight is ``tt_matrix`` (shape ``out x in``), e.g. the result of ``to_tt_matrix``.

        Args:
            tt_matrix: a TT-matrix of shape ``out_features x in_features`` (``nn.Linear.weight``'s
                orientation); dtype and device are kept. A t3f kernel (``in x out``) is recognized and
                transposed when ``bias`` is given and its length matches only the kernel's column count;
                otherwise pass ``tt.transpose(kernel)``.
            bias: optional bias values of shape ``(out_features,)``.
            has_bias: whether the layer has a bias; default: ``bias is not None``. With a bias but no values
                it starts at ``nn.Linear``'s default init.
            in_features: the layer's input size when the TT-matrix is padded (at most its column count);
                default: the column count.
            out_features: the layer's output size when the TT-matrix is padded (at most its row count);
                default: the row count.

        Returns:
            A new TTLinear with copies of the cores.

        Raises:
            TypeError: ``tt_matrix`` is not a TT-matrix TensorTrain, or ``has_bias`` not None or a bool.
            ShapeError: sizes larger than the TT-matrix's, or a bias of another length than the rows (or
                ``out_features``) without sizes that say how the matrix is padded.

        Example:
            >>> import torch, tensortrain as tt
            >>> w = tt.to_tt_matrix(torch.randn(625, 784), [[5, 5, 5, 5], [7, 4, 7, 4]], max_tt_rank=4)
            >>> tt.nn.TTLinear.from_tt(w).weight.shape
            torch.Size([625, 784])
        """
        tt_matrix = F._check_tt_matrix("TTLinear.from_tt", tt_matrix)
        bias = _bias_values(bias, "TTLinear.from_tt", tt_matrix.device)
        if has_bias is not None:
            has_bias = as_flag(has_bias, "TTLinear.from_tt", "has_bias")
        out_dims, in_dims = tt_matrix.get_raw_shape()
        rows, cols = math.prod(out_dims), math.prod(in_dims)
        if (
            out_features is None
            and bias is not None
            and bias.dim() == 1
            and bias.shape[0] < rows
            and bias.shape[0] != cols
        ):
            raise ShapeError(
                f"TTLinear.from_tt: the bias has {bias.shape[0]} entries but the TT-matrix has {rows} rows; for a "
                f"padded layer's weight pass out_features={bias.shape[0]} (and in_features)"
            )
        if (
            in_features is None
            and out_features is None
            and bias is not None
            and bias.dim() == 1
            and bias.shape[0] == math.prod(in_dims) != math.prod(out_dims)
        ):
            out_dims, in_dims = in_dims, out_dims  # a t3f kernel (in x out): load_tt_ transposes it
        # skip_init: built on meta, then allocated; every value is loaded below, so none is drawn from the global
        # generator (a dry-run compress must leave a seeded script's random stream alone)
        layer = torch.nn.utils.skip_init(
            cls,
            math.prod(in_dims) if in_features is None else in_features,
            math.prod(out_dims) if out_features is None else out_features,
            tt_rank=tt_matrix.tt_ranks,
            in_dims=in_dims,
            out_dims=out_dims,
            bias=bias is not None if has_bias is None else has_bias,
            pad=in_features is not None or out_features is not None or None,
            device=tt_matrix.device,
            dtype=tt_matrix.dtype,
        )
        if bias is None and layer.bias is not None:
            layer._reset_bias()  # (a bias without values: nn.Linear's default draw, as documented)
        return layer.load_tt_(tt_matrix, bias=bias)

    def load_tt_(self, tt_matrix: TensorTrain, bias: torch.Tensor | None = None) -> TTLinear:
        """Load a TT-matrix (e.g. from ``tt.to_tt_matrix``) and optionally a bias into this layer, in place.

        t3f's ``layer.set_weights(cores + [bias])`` in one call. The ranks may differ from the layer's
        current ones (to_tt_matrix clips ranks, t3f issue #218): the cores are then replaced by new
        parameters of the new shapes, so create the optimizer after loading. Values are copied and cast to
        the layer's dtype and device.

        Args:
            tt_matrix: a TT-matrix of shape ``out x in`` with row dims ``out_dims`` and column dims
                ``in_dims``. A t3f kernel (shape ``in x out``, cores ``(r, in_k, out_k, r)``) is accepted and
                transposed when its dims tell the two apart; for a square layer with equal in and out dims
                pass ``tt.transpose(kernel)`` yourself.
            bias: optional values for the bias, shape ``(out_features,)``.

        Returns:
            ``self``.

        Raises:
            TypeError: not a TT-matrix.
            ShapeError: its dims match neither ``(out_dims, in_dims)`` nor ``(in_dims, out_dims)``, or a bias
                of the wrong shape or a bias given to a layer without one.
            ValueError: a core or the bias is pruned or parametrized (``prune.remove`` it first).

        Example:
            >>> import torch, tensortrain as tt
            >>> layer = tt.nn.TTLinear(784, 625, tt_rank=16, in_dims=(7, 4, 7, 4), out_dims=(5, 5, 5, 5))
            >>> kernel = tt.to_tt_matrix(torch.randn(625, 784), [[5] * 4, [7, 4, 7, 4]], max_tt_rank=16)
            >>> layer.load_tt_(kernel).tt_ranks
            (1, 16, 16, 16, 1)
        """
        tt_matrix = F._check_tt_matrix("TTLinear.load_tt_", tt_matrix)
        rows, cols = tt_matrix.get_raw_shape()
        cores = list(tt_matrix.tt_cores)
        if (rows, cols) != (self.out_dims, self.in_dims):
            if (rows, cols) != (self.in_dims, self.out_dims):
                raise ShapeError(
                    f"TTLinear.load_tt_: the TT-matrix has dims {tuple(rows)} x {tuple(cols)}, expected "
                    f"out x in = {self.out_dims} x {self.in_dims} (or a t3f kernel {self.in_dims} x "
                    f"{self.out_dims})"
                )
            cores = [c.transpose(1, 2) for c in cores]  # t3f kernel (in x out) -> weight (out x in)
        bias = _bias_values(bias, "TTLinear.load_tt_", tt_matrix.device)
        if bias is not None:
            if self.bias is None:
                raise ShapeError("TTLinear.load_tt_: got bias values but the layer has bias=False")
            if tuple(bias.shape) != (self.out_features,):
                raise ShapeError(
                    f"TTLinear.load_tt_: bias must have shape ({self.out_features},), got {tuple(bias.shape)}"
                )
            if bias.is_complex() and not self.bias.is_complex():
                raise TypeError(f"TTLinear.load_tt_: complex bias values ({bias.dtype}) for a real layer")
            check_loadable(self, ["bias"], "TTLinear.load_tt_", "the bias")
            if bias.is_meta and not self.bias.is_meta:  # (checked before any core is written)
                raise ValueError("TTLinear.load_tt_: the bias is on the meta device and has no data to copy")
        assign_cores_(self.cores, cores, "TTLinear.load_tt_")
        # cores of new ranks are new Parameters: merges cached from the old ones would keep them alive
        self._cache.clear()
        if bias is not None and self.bias is not None:
            with torch.no_grad():
                self.bias.copy_(bias.detach())
        return self

    def to_linear(self) -> nn.Linear:
        """The exact dense equivalent: an ``nn.Linear`` with ``W = full(weight)`` and the same bias.

        Complexity: O(d r^2 in out) time, O(in out) memory (``tt.full`` of the weight).
        """
        like = self.cores[0]
        # skip_init: every value is copied in below, so nothing is drawn from the global generator
        linear = torch.nn.utils.skip_init(
            nn.Linear, self.in_features, self.out_features, bias=self.bias is not None, device=like.device,
            dtype=like.dtype,
        )  # fmt: skip
        # (autocast off: dense_weight is a product autocast lowers, and the copy must be exact)
        with torch.no_grad(), full_precision(like.device.type):
            linear.weight.copy_(self.dense_weight())
            if self.bias is not None and linear.bias is not None:
                linear.bias.copy_(self.bias)
        # a frozen layer stays frozen, as from_linear keeps it
        linear.weight.requires_grad_(any(c.requires_grad for c in self.cores))
        if self.bias is not None and linear.bias is not None:
            linear.bias.requires_grad_(self.bias.requires_grad)
        return linear

    def dense_weight(self) -> torch.Tensor:
        """The full ``out x in`` weight as a dense tensor (differentiable w.r.t. the cores; a padded layer's
        is the top-left block of its TT-matrix)."""
        from ..ops import full

        w = full(self.weight)
        if self._in_pad or self._out_pad:
            w = w[: self.out_features, : self.in_features]
        return w

    # ------------------------------------------------------------------------------------ bookkeeping
    def compression_factor(self) -> float:
        """Dense weight size over TT weight size: ``in * out / core parameters`` (bias excluded)."""
        return self.in_features * self.out_features / self.num_tt_parameters()

    def extra_repr(self) -> str:
        params = sum(p.numel() for p in self.parameters())
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, in_dims={self.in_dims}, "
            f"out_dims={self.out_dims}, tt_ranks={self.tt_ranks}, bias={self.bias is not None}, "
            # (params counts the bias too; compression is the weight's alone, in * out over the cores' count)
            f"params={params:,}, tt_params={self.num_tt_parameters():,}, "
            f"compression={self.compression_factor():,.1f}x"
            + ("" if self._strategy == "auto" else f", strategy={self._strategy!r}")
            + ("" if self._max_saved is None else f", max_saved_bytes={self._max_saved}")
        )
