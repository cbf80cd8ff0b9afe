"""Riemannian optimization of TT parameters as a ``torch.optim.Optimizer`` (``tt.optim``).

Each parameter group holds the cores of one TT (e.g. ``TTLinear.cores``). A step

1. turns the Euclidean core gradients into the Riemannian gradient (the projection of the gradient with
   respect to the full tensor onto the tangent space at the current point);
2. moves along it (with optional momentum, transported to the new tangent space by projection);
3. retracts to the manifold by TT-rounding back to the parameters' ranks, and writes the new cores in place
   (zero-padded when the rounded ranks are smaller).

Step 1 needs no extra forward pass: with left/right-orthonormal frames ``U``, ``V`` of the point ``X`` and
``X_{<k} = U_{<k} P_k``, ``X_{>k} = Q_k V_{>k}``, the core gradient ``G_k = X_{<k}^T grad X_{>k}^T`` gives
the tangent deltas ``P_k^{-T} G_k Q_k^{-T}`` (pseudo-inverses), gauge-projected as in
:mod:`tensortrain.riemannian`. Ranks above the mode sizes and zero-padded cores are fine: the tangent space
is the one at the tensor's actual (numerical) ranks.

Symbols: ``d`` cores, ``n`` mode size, ``r`` rank.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch

from . import decompositions
from . import tangent as ts
from ._transforms import valueless, valueless_kind, without_autocast
from .operands import check_strided, check_writable, memory_overlaps, rescale_pow2, scale_pow2
from .orthogonalization import all_finite, compute_dtype
from .shapes import past_float, show_int
from .tensor_train import TensorTrain, TensorTrainBase, TensorTrainBatch, dtensor_hint, is_dtensor

__all__ = ["RiemannianSGD", "riemannian_gradient_from_cores"]


def _flat(c: torch.Tensor) -> torch.Tensor:
    return c.reshape(c.shape[0], -1, c.shape[-1])


def _sweep_left(
    a: list[torch.Tensor], b: list[torch.Tensor], core_exps: list[torch.Tensor] | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``[A_{<k}^T B_{<k}]_k`` for k = 0..d-1: Gram matrices of the left interfaces of two TTs, each as
    ``(M_k, e_k)`` with the matrix ``M_k 2^{e_k}``: scaled by powers of two at every step, so that a point stored
    with cores of unbalanced scales (10 on half of 100 cores, 0.1 on the rest) does not overflow on the way.
    ``core_exps``: the cores of one operand were scaled by :func:`_scaled_cores`, these are their exponents."""
    out = [a[0].new_ones(1, 1)]
    exps = [torch.zeros(1, dtype=torch.int64, device=a[0].device)]
    for k in range(len(a) - 1):
        e = exps[k] if core_exps is None else exps[k] + core_exps[k]
        m, e = rescale_pow2(torch.einsum("ab,anc,bnd->cd", out[k], a[k], b[k]).unsqueeze(0), e)
        out.append(m[0])
        exps.append(e)
    return out, exps


def _sweep_right(
    a: list[torch.Tensor], b: list[torch.Tensor], core_exps: list[torch.Tensor] | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``[A_{>=k} B_{>=k}^T]_k`` for k = 0..d (entry d is 1): Gram matrices of the right interfaces, scaled as
    in :func:`_sweep_left`."""
    out = [a[0].new_ones(1, 1)] * (len(a) + 1)
    exps = [torch.zeros(1, dtype=torch.int64, device=a[0].device)] * (len(a) + 1)
    for k in range(len(a) - 1, 0, -1):
        e = exps[k + 1] if core_exps is None else exps[k + 1] + core_exps[k]
        m, exps[k] = rescale_pow2(torch.einsum("anb,cnd,bd->ac", a[k], b[k], out[k + 1]).unsqueeze(0), e)
        out[k] = m[0]
    return out, exps


def _scaled_cores(cores: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The point's cores brought below 1 by powers of two, and their exponents, for the sweeps above: a core
    whose own norm is past the dtype's range (entries near 2.5e38 in float32) overflowed a step's product with
    the carried matrix. The frames the sweeps pair them with are orthonormal and need no scaling."""
    pairs = [rescale_pow2(c.unsqueeze(0)) for c in cores]
    return [c[0] for c, _ in pairs], [e for _, e in pairs]


def _check_nonzero(cores: list[torch.Tensor], fname: str) -> None:
    """A zero core makes the tensor zero, which lies on no manifold of fixed TT-rank: its "frame" from rounding is
    arbitrary, and the gradient built on it pointed uphill as often as not (a zero-initialised adapter core)."""
    if valueless(cores[0]):  # (meta and fake cores have no values to test)
        return
    nonzero = torch.stack([c.detach().any() for c in cores]).tolist()  # (one sync, not one per core)
    zero = next((k for k, ok in enumerate(nonzero) if not ok), None)
    if zero is not None:
        raise ValueError(
            f"{fname}: core {zero} is all zeros, so the TT is the zero tensor, which has no tangent space at a "
            "fixed TT-rank (the Riemannian gradient is undefined there); start from nonzero cores (e.g. a small "
            "random core in place of the zero one)"
        )


def _core_deltas(
    x: list[torch.Tensor], g: list[torch.Tensor], fname: str
) -> tuple[list[torch.Tensor], Any, Any]:
    """Gauged tangent deltas (batch axis of 1) of the Riemannian gradient, and their frame ``(U, V)``.

    ``UL``/``VR`` (QR sweeps of ``x`` itself) span exactly the interfaces of ``x``, so the core gradient
    ``G_k`` gives ``UL_{<k}^T grad VR_{>k}^T`` by pseudo-inverses; the frame ``(U, V)`` is taken from a
    minimal (numerically full-rank) representation, whose interfaces lie in those spans.
    """
    if valueless(x[0]):
        # (round's own refusal named an epsilon and a max_tt_rank that the optimizer's caller never gave)
        raise ValueError(
            f"{fname}: the gradient is taken at the point's numerical ranks, read from its values, and "
            f"{valueless_kind(x[0])} has no values to read; step on cores with values"
        )
    dtype, work = x[0].dtype, compute_dtype(x[0].dtype)
    if work != dtype:  # half precision: pinv and QR need float32; the results go back to dtype
        deltas, u, v = _core_deltas([c.to(work) for c in x], [a.to(work) for a in g], fname)
        return [dk.to(dtype) for dk in deltas], [c.to(dtype) for c in u], [c.to(dtype) for c in v]
    ul, vr = ts.left_sweep(x), ts.right_sweep(x)
    # Only round-off is dropped: a direction of 1e-5 of the norm is well resolved in float32 and has its full
    # share of the tangent space (100 eps dropped it there, and with it most of the gradient).
    tol = 10 * torch.finfo(x[0].dtype).eps
    minimal = decompositions.round(TensorTrain(x), epsilon=tol) if len(x) > 1 else TensorTrain(x)
    # round leaves the norm in the first core: zero there is the zero tensor, also from cores none of which is
    # zero (their rank slots never meet)
    if not bool(minimal.tt_cores[0].any()):
        raise ValueError(
            f"{fname}: the cores multiply out to the zero tensor (no core is all zeros, but they cancel), which "
            "has no tangent space at a fixed TT-rank; start from cores whose product is not zero"
        )
    u, v = ts.tangent_frame(minimal)
    xs, x_exp = _scaled_cores(x)
    (p, p_exp), (m, m_exp) = _sweep_left(ul, xs, x_exp), _sweep_left(ul, u)
    (q, q_exp), (n, n_exp) = _sweep_right(xs, vr, x_exp), _sweep_right(v, vr)
    deltas = []
    for k in range(len(x)):
        left = m[k].T @ torch.linalg.pinv(p[k].T)
        right = torch.linalg.pinv(q[k + 1].T) @ n[k + 1].T
        delta = torch.einsum("ab,bnc,cd->and", left, g[k], right).unsqueeze(0)
        # the scales: m and n between orthonormal frames stay near 1; p and q carry the point's interfaces
        deltas.append(scale_pow2(delta, m_exp[k] + n_exp[k + 1] - p_exp[k] - q_exp[k + 1]))
    return [ts.gauge(u[k], dk) for k, dk in enumerate(deltas[:-1])] + [deltas[-1]], u, v


@without_autocast  # (as project: QR sweeps and the products between them in the cores' dtype)
def riemannian_gradient_from_cores(x: TensorTrain, core_grads: Iterable[torch.Tensor]) -> TensorTrain:
    """The Riemannian gradient at ``x`` from the Euclidean gradients with respect to its cores.

    Args:
        x: the point, a TensorTrain (ranks above the mode sizes or zero-padded cores are fine).
        core_grads: ``dL/dcore_k`` for every core of ``x`` (e.g. the ``.grad`` of its Parameters).

    Returns:
        The tangent vector ``project(dL/dfull(x), x)`` (ranks ``2 r``, ``projection_on = x``), expressed in the
        frame ``project`` uses, so it combines with other tangent vectors at ``x``
        (``pairwise_flat_inner_projected``, ``add_n_projected``). For an ``x`` whose cores are rank-deficient
        (zero-padded beyond its actual ranks, or a sum such as ``x0 + x0``) it is the projection onto the
        tangent space at its numerical ranks: the core gradients carry nothing about the directions that would
        raise them. ``project(g, x)`` there takes the extra directions from its QR sweeps of the cores as given,
        so the two differ (round ``x`` to its numerical ranks first, ``tt.round(x, epsilon=1e-10)``, and they
        agree).

    Raises:
        TypeError: ``x`` is not a TensorTrain, ``core_grads`` is not a sequence, a gradient is sparse, or its dtype
            or device differs from the cores'.
        ValueError: the gradients' count or shapes differ from the cores', a gradient is None or not finite, or
            ``x`` is the zero tensor (a core of zeros, or cores that cancel): it has no tangent space at a fixed
            rank; meta or fake cores (their numerical ranks cannot be read).

    Complexity: O(d n r^3).

    Example:
        >>> import torch, tensortrain as tt
        >>> x = tt.TensorTrain([torch.randn(1, 3, 2).requires_grad_(), torch.randn(2, 4, 1).requires_grad_()])
        >>> (tt.full(x) ** 2).sum().backward()
        >>> g = tt.optim.riemannian_gradient_from_cores(x, [c.grad for c in x.tt_cores])
        >>> torch.allclose(tt.full(g), 2 * tt.full(x).detach(), atol=1e-4)
        True
    """
    if not isinstance(x, TensorTrain):
        raise TypeError(f"riemannian_gradient_from_cores: x must be a TensorTrain, got {type(x).__name__}")
    ts.check_where(x, "riemannian_gradient_from_cores")  # complex: refused, as project refuses it
    try:
        grads = list(core_grads)
    except TypeError:  # (a 0-dim tensor: torch's "iteration over a 0-d tensor" named nothing)
        raise TypeError(
            f"riemannian_gradient_from_cores: core_grads must be a sequence of tensors (one per core), got "
            f"{type(core_grads).__name__}"
        ) from None
    missing = [k for k, a in enumerate(grads) if not isinstance(a, torch.Tensor)]
    if missing:
        raise ValueError(
            f"riemannian_gradient_from_cores: the gradients of cores {missing} are not tensors (None before "
            "backward, or for a core that took no part in the loss)"
        )
    if len(grads) != x.ndims() or any(a.shape != c.shape for a, c in zip(grads, x.tt_cores, strict=True)):
        raise ValueError(
            "riemannian_gradient_from_cores: expected one gradient per core with the core's shape, got "
            f"{[tuple(a.shape) for a in grads]} for cores {[tuple(c.shape) for c in x.tt_cores]}"
        )
    for k, a in enumerate(grads):  # (a sparse one failed inside a reshape)
        check_strided("riemannian_gradient_from_cores", f"the gradient of core {k}", a)
    odd = [k for k, a in enumerate(grads) if a.dtype != x.dtype or a.device != x.device]
    if odd:
        raise TypeError(
            f"riemannian_gradient_from_cores: the gradients of cores {odd} have dtype {grads[odd[0]].dtype} on "
            f"{grads[odd[0]].device}, the cores {x.dtype} on {x.device}"
        )
    if not all_finite(grads):
        raise ValueError("riemannian_gradient_from_cores: a core's gradient contains NaN or inf")
    _check_nonzero(list(x.tt_cores), "riemannian_gradient_from_cores")
    point = x.detach()
    deltas, u, v = _core_deltas(
        [_flat(c) for c in point.tt_cores],
        [_flat(a.detach()) for a in grads],
        "riemannian_gradient_from_cores",
    )
    # Re-expressed in x's own tangent frame, the one project(., x) and gradients(., x) use: the deltas above are
    # gauged in the frame of a minimal representation, and tt.pairwise_flat_inner_projected / add_n_projected
    # combine deltas of tangent vectors on x as if they shared a frame. Exact: the vector lies in that space.
    u0, v0 = ts.tangent_frame(point)
    deltas = ts.deltas_of_tt(ts.assemble(deltas, u, v), u0, v0)
    return ts.tangent(deltas, u0, v0, x, batch=False)  # type: ignore[return-value]


def _pad_to(core: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    out = core.new_zeros(shape)
    out[: core.shape[0], ..., : core.shape[-1]] = core
    return out


class RiemannianSGD(torch.optim.Optimizer):
    """Riemannian gradient descent on the manifold of TTs of fixed rank, one TT per parameter group.

    ``params`` is an iterable of TT parameter sets: each an ``nn.ParameterList`` / sequence of the cores of
    one TT (in order), a TensorTrain whose cores are the parameters (such as a TT layer's ``weight``), or a
    dict ``{"params": cores, "lr": ..., "momentum": ...}``, or an ``nn.Module`` whose TT layers (submodules
    with a TT ``weight`` and a ``cores`` ParameterList) are all used (layers tied by one shared ``cores``
    list, an embedding and its output head, as one set); one TT's ``ParameterList``, TensorTrain or dict alone
    is one set. Other parameters (biases) need an ordinary optimizer beside this one.

    Each step rounds the moved TT back to its ranks, which also puts its cores in the rounding's gauge: the
    cores change at every step, even at a zero gradient, while the tensor they represent moves only by the step
    (``torch.optim.SGD`` would leave the parameters bit-identical at a zero gradient).

    Args:
        params: the TT parameter sets (see above).
        lr: the step size (> 0).
        momentum: heavy-ball momentum in [0, 1): the previous direction is transported to the new tangent
            space by projection.

    Raises:
        ValueError: a bad ``lr``/``momentum`` (a group's own too) or an empty parameter set; in :meth:`step`, a
            TT whose cores are partly frozen (``requires_grad=False``; a wholly frozen TT is skipped), a
            non-finite gradient, or a TT that is the zero tensor (an all-zero core, or cores that cancel: it has
            no tangent space at a fixed rank; every TT is checked first: then no TT has moved), meta or fake cores
            (a step reads their numerical ranks), a momentum direction (from ``load_state_dict``) for a TT of other
            modes, a step (``lr`` times the direction) past the dtype's range; one tensor at
            two positions of a TT, cores that share memory (views of one buffer, also across parameter sets) or
            an expanded (stride-0) core; for an ``nn.Module``, TT layers that share some of their cores but not
            the whole list.
        TypeError: a parameter set that is not a sequence of 3-D or 4-D cores (a bias in it), a set (no
            order), a TensorTrainBatch, ``params`` that is neither a module, a TT nor an iterable of parameter
            sets, or a DTensor core (an FSDP2 shard: gather it first); in :meth:`step`, a sparse gradient.

    Complexity: per step and TT, O(d n r^3) (frames, pseudo-inverses of r x r matrices, one rounding of a
    rank-2r TT); no extra forward or backward pass.

    Example:
        >>> import torch, tensortrain as tt
        >>> layer = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3))
        >>> opt = tt.optim.RiemannianSGD([layer.cores], lr=0.1)
        >>> layer(torch.randn(5, 8)).pow(2).sum().backward()
        >>> opt.step()
        >>> layer.weight.tt_ranks
        (1, 2, 1)
    """

    def __init__(self, params: Any, lr: float, momentum: float = 0.0) -> None:
        defaults = {"lr": lr, "momentum": momentum}
        _check_hyper(defaults)  # (which makes Python numbers floats)
        super().__init__(_groups(params), defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Riemannian step for every TT; ``closure`` (optional) re-evaluates and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # every TT is checked, and its direction computed, before any moves: a step that raises leaves all of
        # them as they were
        stepping = [group for group in self.param_groups if self._ready(group)]
        directions = [self._direction(group) for group in stepping]
        # and every new point computed before any is written: a step that leaves the dtype's range (an lr set too
        # large after construction) raised in a later group's rounding after the earlier TTs had moved
        moves = [
            self._new_point(group, *direction) for group, direction in zip(stepping, directions, strict=True)
        ]
        for group, (new, kept) in zip(stepping, moves, strict=True):
            cores: list[torch.Tensor] = group["params"]
            if kept is not None:
                # Stored as plain tensors (the cores of the tangent TT) so that state_dict() round-trips.
                self.state[cores[0]]["direction"] = kept
            for c, nc in zip(cores, new.tt_cores, strict=True):
                c.copy_(_pad_to(nc, c.shape))
        return loss

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add one TT's cores (``{"params": cores, ...}``), checked as the constructor checks them."""
        # (the constructor's groups come through here too, already checked: checking twice is harmless)
        group = _groups([param_group])[0]
        # (torch refuses the same Parameter in two groups; so, views of one buffer)
        for other in self.param_groups:
            for c in group["params"]:
                if any(c is not o and memory_overlaps(c, o) for o in other["params"]):
                    raise ValueError(
                        "RiemannianSGD: a core of this TT shares memory with a core of another parameter set "
                        "(views of one buffer); each step would overwrite the other TT's: give each its own tensor"
                    )
        super().add_param_group(group)

    def _ready(self, group: dict[str, Any]) -> bool:
        """Whether the group's TT takes a step (it has gradients and is not frozen); a ValueError for one that
        cannot take a correct step."""
        cores: list[torch.Tensor] = group["params"]
        if all(c.grad is None for c in cores):
            return False
        frozen = [k for k, c in enumerate(cores) if not c.requires_grad]
        if len(frozen) == len(cores):
            return False  # a frozen TT stays as it is, as torch's optimizers leave frozen parameters
        if frozen:
            # a Riemannian step moves the whole TT (rounding rewrites every core): it cannot keep some cores
            raise ValueError(
                f"RiemannianSGD: cores {frozen} of a TT are frozen (requires_grad=False) and the others are not; "
                "a Riemannian step rewrites every core of its TT: freeze all of them or none (no TT was changed)"
            )
        # (a sparse .grad, which torch.optim.SGD takes, failed inside a reshape)
        for k, c in enumerate(cores):
            if c.grad is not None:
                check_strided("RiemannianSGD", f"the gradient of core {k}", c.grad)
        if not all_finite([c.grad for c in cores if c.grad is not None]):
            raise ValueError("RiemannianSGD: a core's gradient contains NaN or inf; no TT was changed")
        _check_nonzero(cores, "RiemannianSGD (no TT was changed)")
        return True

    # (autocast off for the direction and the move, not for step's closure: the QR sweeps, projections and
    # rounding run in the cores' dtype, and autocast would lower the products between them)
    @without_autocast
    def _direction(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], Any, Any]:
        """The group's step direction (gradient deltas, plus the previous direction with momentum) and its frame
        (nothing changes yet)."""
        cores: list[torch.Tensor] = group["params"]
        grads = [_flat(torch.zeros_like(c) if c.grad is None else c.grad) for c in cores]
        deltas, u, v = _core_deltas(
            [_flat(c.detach()) for c in cores], grads, "RiemannianSGD (no TT was changed)"
        )
        state = self.state[cores[0]]
        if group["momentum"] and "direction" in state:
            # Transport the previous direction to the new tangent space by projecting it: here, before any TT
            # moves, so that a stored direction that does not fit raises with every TT as it was.
            # (in the cores' dtype and device: the layer may have been moved or cast since, as SGD's buffers follow)
            point = TensorTrain([c.detach() for c in cores])
            stored = [tuple(t.shape[1:-1]) for t in state["direction"]]
            if stored != [tuple(c.shape[1:-1]) for c in cores]:
                raise ValueError(
                    f"RiemannianSGD: the momentum direction in the optimizer's state is for a TT of core modes "
                    f"{tuple(stored)}, but its parameter set's cores have modes "
                    f"{tuple(tuple(c.shape[1:-1]) for c in cores)} (a state_dict of another model's optimizer?); "
                    "no TT was changed"
                )
            previous = TensorTrain([t.to(point.device, point.dtype) for t in state["direction"]])
            old, _, _, _ = ts.project_deltas(previous, point, "RiemannianSGD", frame=(u, v))
            deltas = [dl + group["momentum"] * o for dl, o in zip(deltas, old, strict=True)]
        return deltas, u, v

    @without_autocast
    def _new_point(
        self, group: dict[str, Any], deltas: list[torch.Tensor], u: Any, v: Any
    ) -> tuple[TensorTrainBase, list[torch.Tensor] | None]:
        """The group's TT after the step (retracted by rounding to its ranks) and, with momentum, the direction
        to keep; nothing is written yet."""
        cores: list[torch.Tensor] = group["params"]
        point = TensorTrain([c.detach() for c in cores])
        kept = list(ts.tangent(deltas, u, v, point, batch=False).tt_cores) if group["momentum"] else None
        flat = [-group["lr"] * dl for dl in deltas]
        flat[0] = flat[0] + v[0].unsqueeze(0)  # the point itself: first delta V_1, the others zero
        if not all_finite(flat):  # (round's own error named neither the optimizer nor lr)
            raise ValueError(
                f"RiemannianSGD: a step of lr={group['lr']!r} leaves {point.dtype}'s range (inf or NaN in the "
                "moved TT); lower lr (no TT was changed)"
            )
        moved = ts.tangent(flat, u, v, point, batch=False)
        ranks = [int(c.shape[0]) for c in cores[1:]]
        return (decompositions.round(moved, max_tt_rank=ranks) if ranks else moved), kept


def _check_hyper(group: dict[str, Any]) -> None:
    for name in ("lr", "momentum"):
        value = group.get(name, 0.0)
        scalar = isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype.is_floating_point
        if not scalar and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise TypeError(f"RiemannianSGD: {name} must be a real number, got {type(value).__name__}")
        if name in group and not scalar:  # (Python floats: an int past int64, as lr, overflowed in the step)
            if past_float(value):
                raise ValueError(f"RiemannianSGD: {name} must be finite, got {show_int(value)}")
            group[name] = float(value)  # (NaN and inf stay so: named below as before)
    if "lr" in group and not group["lr"] > 0:
        raise ValueError(f"RiemannianSGD: lr must be > 0, got {group['lr']!r}")
    if "lr" in group and not group["lr"] < math.inf:  # (the first step would fail inside round)
        raise ValueError(f"RiemannianSGD: lr must be finite, got {group['lr']!r}")
    if "momentum" in group and not 0 <= group["momentum"] < 1:
        raise ValueError(f"RiemannianSGD: momentum must be in [0, 1), got {group['momentum']!r}")


def _groups(params: Any) -> list[dict[str, Any]]:
    """RiemannianSGD's checked parameter groups from its ``params``: a module (one group per TT layer), a TT, one
    TT's cores, a group dict, or a sequence of these."""
    if isinstance(params, torch.Tensor) or not isinstance(
        params, (Iterable, torch.nn.Module, TensorTrainBase)
    ):
        raise TypeError(
            "RiemannianSGD: params must be a module with TT layers, a TT, or parameter sets (lists of one TT's "
            f"cores, e.g. [layer.cores]), got a {type(params).__name__}"
        )
    if isinstance(params, (torch.nn.ParameterList, TensorTrainBase, dict)):
        # one TT's cores (layer.cores), one TT (layer.weight) or one group's dict, given without a list
        params = [params]
    if isinstance(params, torch.nn.Module):
        params = _module_core_sets(params)
    groups = [_group(item, isinstance(params, (set, frozenset))) for item in params]
    if not groups:
        raise ValueError("RiemannianSGD: got no parameter sets")
    return groups


def _module_core_sets(module: torch.nn.Module) -> list[torch.nn.ParameterList]:
    """The core lists of ``module``'s TT layers, each once (tied layers share one), in module order."""
    sets, seen = [], set[tuple[int, ...]]()
    for name, m in module.named_modules():
        cores = getattr(m, "cores", None)
        if isinstance(cores, torch.nn.ParameterList) and any(is_dtensor(c) for c in cores):
            # (named before .weight, whose TensorTrain would refuse the shard under its own name)
            raise TypeError(dtensor_hint("RiemannianSGD", f"a core of the layer {name!r}"))
        if not isinstance(cores, torch.nn.ParameterList) or not isinstance(
            getattr(m, "weight", None), TensorTrainBase
        ):
            continue
        key = tuple(id(c) for c in m.cores)
        if key in seen:  # tied layers (an embedding and its output head sharing one ParameterList): one set
            continue
        shared = [c for c in m.cores if any(id(c) in k for k in seen)]
        if shared:
            raise ValueError(
                f"RiemannianSGD: the layer {name!r} shares some but not all of its cores with another TT layer; "
                "a Riemannian step moves one TT's cores together: tie whole core lists (b.cores = a.cores) "
                "or give the parameter sets by hand"
            )
        seen.add(key)
        sets.append(m.cores)
    if not sets:
        raise ValueError(f"RiemannianSGD: the module {type(module).__name__} has no TT layers")
    return sets


def _group(item: Any, in_set: bool) -> dict[str, Any]:
    """One checked parameter group from one entry of ``params`` (``in_set``: ``params`` is a set)."""
    if isinstance(item, dict) and "params" not in item:
        raise TypeError(
            f"RiemannianSGD: a parameter group dict needs a 'params' entry (one TT's cores), got keys "
            f"{sorted(map(str, item))[:5]}"
        )
    group = dict(item) if isinstance(item, dict) else {"params": item}
    _check_hyper(group)
    if isinstance(group["params"], TensorTrainBatch):
        raise TypeError(
            "RiemannianSGD: steps single TTs, got a TensorTrainBatch; give each TT's cores as a parameter "
            "set of its own"
        )
    if isinstance(group["params"], TensorTrainBase):  # a layer's weight: its cores are the parameters
        group["params"] = list(group["params"].tt_cores)
    if isinstance(group["params"], (set, frozenset)) or in_set:
        # (torch.optim refuses sets too: their order changes between runs, and here the order is the TT's)
        raise TypeError(
            "RiemannianSGD: a parameter set must be an ordered sequence of one TT's cores (a list, tuple or "
            "layer.cores), got a set, whose order is not the cores'"
        )
    if isinstance(group["params"], torch.Tensor):
        raise TypeError(
            "RiemannianSGD: each parameter set must be the sequence of one TT's cores (e.g. layer.cores), "
            "got a single tensor; wrap the cores of each TT in a list"
        )
    group["params"] = _core_set(group["params"])
    return group


def _core_set(params: Iterable[Any]) -> list[torch.Tensor]:
    """The cores of one parameter set as a list, checked to be one real TT's distinct, writable cores."""
    cores = list(params)
    if not cores:
        raise ValueError("RiemannianSGD: got an empty parameter set")
    odd = next(
        (k for k, c in enumerate(cores) if not isinstance(c, torch.Tensor) or c.dim() not in (3, 4)), None
    )
    if odd is not None:
        c = cores[odd]
        got = f"shape {tuple(c.shape)}" if isinstance(c, torch.Tensor) else type(c).__name__
        raise TypeError(
            f"RiemannianSGD: a parameter set holds one TT's cores (3-D, or 4-D for a TT-matrix), but entry "
            f"{odd} has {got}: biases and other ordinary parameters need an ordinary optimizer (torch.optim.SGD, "
            "Adam) beside this one"
        )
    sharded = next((k for k, c in enumerate(cores) if is_dtensor(c)), None)
    if sharded is not None:
        raise TypeError(dtensor_hint("RiemannianSGD", f"core {sharded}"))
    ts.check_where(TensorTrain(cores), "RiemannianSGD")  # the cores chain into one real TT
    twice = [k for k, c in enumerate(cores) if any(c is o for o in cores[:k])]
    if twice:
        # the step writes each position's new core into the same tensor: the last write would win
        raise ValueError(
            f"RiemannianSGD: cores {twice} of a TT are the same tensor as an earlier core; a Riemannian step "
            "gives each core its own new value: use separate parameters"
        )
    # (and so for separate Parameters over one buffer; an expanded core cannot be written at all: the step
    # would write the cores before it and then fail)
    check_writable("RiemannianSGD", cores)
    return cores
