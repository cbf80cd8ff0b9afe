"""Choosing a contraction program: the search over the plans that ``contraction.cost`` prices.

Internal module (no public names). The candidates of each strategy (every split of the full plan; for sweeps
the best grouping in each direction, a dynamic programme over split points that keeps a Pareto front of time
and memory kept for backward), the cheapest of them within an optional memory bound (:func:`choose`), and the
fewest FLOPs of any contraction order (:func:`order_floor`, a lower bound for every plan). Pure Python on
shapes, so planning traces under ``torch.compile``.
"""

from __future__ import annotations

from . import cost as _cost
from . import machine as _machine
from .cost import BOTH, Dims, Groups, Need, Program
from .machine import Machine

__all__: list[str] = []


def best_grouping(
    dims: Dims,
    direction: str,
    batch: int,
    item: int,
    grad: bool,
    m: Machine,
    cached: bool = False,
    need: Need = BOTH,
) -> Groups:
    """The cheapest partition of the cores into consecutive groups: the fastest entry of :func:`grouping_front`.

    A group's step cost depends only on its own boundaries (they fix the state sizes before and after it), so
    the optimum over all ``2^(d-1)`` groupings takes ``O(d^2)`` step evaluations. The single group of all cores
    (W itself) is left to the full plans, unless a layer's inference cache may keep it (a tiny W).
    """
    return grouping_front(dims, direction, batch, item, grad, m, cached, need=need)[0][2]


def grouping_front(
    dims: Dims,
    direction: str,
    batch: int,
    item: int,
    grad: bool,
    m: Machine,
    cached: bool = False,
    recompute: bool = False,
    need: Need = BOTH,
) -> list[tuple[float, int, Groups]]:
    """The groupings no other grouping beats in both time and kept memory: ``(seconds, saved bytes, groups)``.

    A dynamic programme over split points that keeps at each one the Pareto front of (time, activations kept
    for backward): both add up over the groups. Fastest first; each later entry keeps strictly less.
    ``recompute``: of sweeps that recompute their states in backward (their cost adds up over groups too).
    """
    d = len(dims[0])
    fronts: list[list[tuple[float, int, Groups]]] = [[(0.0, 0, ())]]
    for j in range(1, d + 1):
        found: list[tuple[float, int, Groups]] = []
        for i in range(j):
            if i == 0 and j == d > 1 and (grad or not (cached and _cost.cacheable(dims, 0, d))):
                continue  # one group is W, which the full plans build better (split in the middle, no autograd)
            c = _cost.sweep_cost(dims, ((i, j),), direction, batch, item, grad, m, cached, recompute, need)
            found += [(t + c.seconds, s + c.saved_bytes, g + ((i, j),)) for t, s, g in fronts[i]]
        # by time, then kept bytes: an insertion sort in explicit loops (dynamo cannot trace a sort keyed by
        # tuples, and planning is traced under torch.compile)
        ordered: list[tuple[float, int, Groups]] = []
        for e in found:
            k = len(ordered)
            while k > 0 and (
                ordered[k - 1][0] > e[0] or (ordered[k - 1][0] == e[0] and ordered[k - 1][1] > e[1])
            ):
                k -= 1
            ordered.insert(k, e)
        front: list[tuple[float, int, Groups]] = []
        for e in ordered:
            if not front or e[1] < front[-1][1]:
                front.append(e)
        fronts.append(front)
    return fronts[d]


def full_programs(d: int, grad: bool = False) -> list[Program]:
    """Full reconstruction for each split; in training each also in a keep-W and a rebuild-W variant."""
    splits = range(1, d) if d > 1 else (1,)
    variants = ("recompute", "keep") if grad else ("recompute",)
    return [("full", v, ((0, s), (s, d))) for s in splits for v in variants]


def candidates(
    dims: Dims,
    strategy: str,
    batch: int,
    item: int,
    grad: bool,
    m: Machine,
    cached: bool = False,
    need: Need = BOTH,
) -> list[Program]:
    """The programs a strategy chooses from (``auto``: every full split and the best grouping each way)."""
    d = len(dims[0])
    if strategy == "full":
        return full_programs(d, grad)
    if strategy in ("cores_rtl", "cores_ltr"):
        return [("sweep", strategy[-3:], tuple((k, k + 1) for k in range(d)))]
    # on equal estimates (the two directions often mirror each other) training takes ltr, which ran 0-13% faster
    # there on the benchmark cases (784x625 and 4096x4096 at batch 64) on the Intel host; inference takes rtl. On the
    # 2-core EPYC the two directions trained within 4% of each other when timed alone, side by side (784x625 rank 4
    # at batch 64 and 1024, 4096x4096 rank 16 at batch 64); timed among other plans (calibrate, cell.py) either
    # one read up to 2.3x slower, in different runs. Below SWEEP_FUNCTION_MIN_BATCH (autograd's own products) training
    # takes rtl: 11-15% faster at batch 1 on the Intel host (4096x4096 ranks 16 and 64, 784x625 rank 16, 768x3072
    # rank 64; cell.py --alone, both orders)
    both = ("ltr", "rtl") if grad and batch >= _machine.SWEEP_FUNCTION_MIN_BATCH else ("rtl", "ltr")
    directions = (strategy[-3:],) if strategy in ("grouped_rtl", "grouped_ltr") else both
    sweeps: list[Program] = [
        ("sweep", dr, best_grouping(dims, dr, batch, item, grad, m, cached, need)) for dr in directions
    ]
    return sweeps if strategy != "auto" else full_programs(d, grad) + sweeps


def choose(
    dims: Dims,
    strategy: str,
    batch: int,
    item: int,
    device_type: str,
    grad: bool,
    cached: bool = False,
    max_saved: int | None = None,
    need: Need = BOTH,
    fold: bool = True,
) -> Program:
    """The cheapest program of ``strategy`` for this TT-matrix, batch size, dtype size, device and grad mode
    (``need``: which gradients a training backward computes; ``fold``: False prices no narrow folds, as the
    executors run none under torch.compile).

    ``cached``: sweeps' merged groups are kept between calls (a layer's inference), so merging is free.
    ``max_saved``: in training, the fastest program keeping at most this many bytes for backward; when none
    does, the one keeping least (the sweeps are then chosen from :func:`grouping_front`, not by time alone).
    """
    m = _machine.machine(device_type, item, fold)
    if max_saved is not None and grad:
        return _choose_within(dims, strategy, batch, item, m, cached, max_saved, need)
    top: tuple[float, int, Program] | None = None
    for prog in candidates(dims, strategy, batch, item, grad, m, cached, need):
        c = _cost.estimate(dims, prog, batch, item, grad, m, cached, need)
        # on equal estimates the one keeping less for backward, then the candidates' order
        if top is None or c.seconds < top[0] or (c.seconds == top[0] and c.saved_bytes < top[1]):
            top = (c.seconds, c.saved_bytes, prog)
    assert top is not None
    return top[2]


def _choose_within(
    dims: Dims, strategy: str, batch: int, item: int, m: Machine, cached: bool, max_saved: int, need: Need
) -> Program:
    progs: list[Program] = []
    if strategy in ("auto", "full"):
        progs += full_programs(len(dims[0]), True)
    if strategy in ("cores_rtl", "cores_ltr"):
        ((_, dr, groups),) = candidates(dims, strategy, batch, item, True, m, cached, need)
        progs += [("sweep", dr, groups), ("resweep", dr, groups)]
    elif strategy != "full":
        # (the directions in the order of candidates)
        both = ("ltr", "rtl") if batch >= _machine.SWEEP_FUNCTION_MIN_BATCH else ("rtl", "ltr")
        for dr in (strategy[-3:],) if strategy in ("grouped_rtl", "grouped_ltr") else both:
            for kind in ("sweep", "resweep"):
                front = grouping_front(dims, dr, batch, item, True, m, cached, kind == "resweep", need)
                fits = [g for _, s, g in front if s <= max_saved]
                progs.append((kind, dr, fits[0] if fits else front[-1][2]))
    costs = [(prog, _cost.estimate(dims, prog, batch, item, True, m, cached, need)) for prog in progs]
    # Below SWEEP_FUNCTION_MIN_BATCH the cost model prices autograd's folding copies for keeping sweeps but not
    # the Function's overhead of recomputing ones, which measured 1.1-1.4x slower at batch 1, not faster: there
    # they are candidates only where no keeping sweep fits.
    if batch < _machine.SWEEP_FUNCTION_MIN_BATCH and any(
        p[0] == "sweep" and c.saved_bytes <= max_saved for p, c in costs
    ):
        costs = [(p, c) for p, c in costs if p[0] != "resweep"]

    best: tuple[tuple[int, float, float], Program] | None = None
    for prog, c in costs:  # (explicit loops, as in grouping_front: traced under torch.compile)
        # within the limit: fastest, on an exact tie the one keeping less (as choose() without a limit); else
        # least kept. (A branch, not the comparison itself in the tuple: with a symbolic batch, the dynamo of
        # torch 2.7 cannot order tuples of symbolic booleans)
        over = c.saved_bytes > max_saved
        rank: tuple[int, float, float] = (
            (1, c.saved_bytes, c.seconds) if over else (0, c.seconds, c.saved_bytes)
        )
        if best is None or rank < best[0]:
            best = (rank, prog)
    assert best is not None
    return best[1]


def order_floor(dims: Dims, batch: int) -> int:
    """The fewest FLOPs of any order of pairwise contractions computing ``x @ W^T`` from ``x`` and the cores.

    A dynamic programme over subsets of the ``d + 1`` operands (``3^(d+1)`` splits): the cost of a subset is the
    cheapest split into two contracted subsets plus ``2 prod(sizes of the indices involved)`` for their product
    (``1x`` when nothing is summed). Indices are the batch, the row and column modes and the inner ranks; an
    index stays in a partial result while an operand outside it or the output carries it. Sweeps, groupings and
    building W are all such orders, so no plan does fewer FLOPs forward (merges included).
    """
    rows, cols, ranks = dims
    d = len(rows)
    size: dict[str, int] = {"b": batch}
    ops: list[frozenset[str]] = [frozenset(["b", *(f"n{k}" for k in range(d))])]
    for k in range(d):
        size[f"m{k}"], size[f"n{k}"] = rows[k], cols[k]
        idx = {f"m{k}", f"n{k}"}
        for r in (k, k + 1):
            if 0 < r < d:
                size[f"r{r}"] = ranks[r]
                idx.add(f"r{r}")
        ops.append(frozenset(idx))
    out = frozenset(["b", *(f"m{k}" for k in range(d))])
    full = (1 << (d + 1)) - 1

    def kept(s: int) -> frozenset[str]:
        inside = frozenset().union(*(ops[i] for i in range(d + 1) if s >> i & 1))
        outside = frozenset().union(*(ops[i] for i in range(d + 1) if not s >> i & 1))
        return inside & (outside | out)

    best = {1 << i: 0 for i in range(d + 1)}
    keep = {s: kept(s) for s in range(1, full + 1)}
    for s in range(1, full + 1):  # (every proper subset of s is smaller than s)
        if s in best:
            continue
        cheapest = None
        a = (s - 1) & s
        while a:
            b = s ^ a
            if a < b:  # each unordered split once
                involved = keep[a] | keep[b]
                flops = _cost.prod([size[i] for i in involved]) * (2 if involved - keep[s] else 1)
                total = best[a] + best[b] + flops
                if cheapest is None or total < cheapest:
                    cheapest = total
            a = (a - 1) & s
        assert cheapest is not None
        best[s] = cheapest
    return best[full]
