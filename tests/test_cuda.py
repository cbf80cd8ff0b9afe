"""The library on an accelerator, against the CPU: every result on the device, with the CPU's values.

Device: ``TENSORTRAIN_TEST_DEVICE`` when set (``cpu`` runs these checks against themselves, to test the module on a
machine without an accelerator), else ``cuda`` when available; otherwise the module is skipped. Each check builds
seeded float64 (or float32) inputs on the CPU, runs the operation there, moves the inputs to the device, runs it
again and asserts that every output tensor (cores, dense results, gradients, parameters) is on the device (no
silent CPU fallback) and that its values match the CPU's (float64 ``rtol`` 1e-9; float32 and bfloat16 looser).
Factors that are unique only up to a gauge (TT-SVD, QR sweeps, rounding, the randomized sketch, whose generator
draws other numbers on another device) are compared through what is unique: the dense tensor, the ranks,
orthonormality, errors.

The ``torch.compile`` test (inductor, seconds of compile time) can be deselected with ``-k "not compile"``; it
and the CUDA graph tests run on CUDA only.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import tensortrain as tt
from strategies import random_cores, random_tt
from tensortrain import contraction as C


def _device() -> torch.device:
    name = os.environ.get("TENSORTRAIN_TEST_DEVICE")
    if not name:
        if not torch.cuda.is_available():
            pytest.skip(
                "no accelerator: CUDA is not available and TENSORTRAIN_TEST_DEVICE is not set "
                "(TENSORTRAIN_TEST_DEVICE=cpu runs these checks on the CPU)",
                allow_module_level=True,
            )
        name = "cuda"
    try:
        device = torch.empty(0, device=name).device  # (an index: "cuda" -> "cuda:0", as tensors report it)
    except (RuntimeError, AssertionError) as e:  # (a CPU-only torch raises AssertionError for "cuda")
        pytest.fail(f"TENSORTRAIN_TEST_DEVICE={name!r} is not usable here: {e}", pytrace=False)
    if device.type == "meta":
        pytest.fail("TENSORTRAIN_TEST_DEVICE=meta: meta tensors have no values to compare", pytrace=False)
    return device


DEVICE = _device()
CUDA = DEVICE.type == "cuda"
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA only")

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16
# relative tolerances against the CPU (absolute ones scale with the result's largest entry): float64 results differ
# only by summation order; float32 ones by that at single precision (no TF32: torch leaves it off for matmuls)
RTOL = {F64: 1e-9, F32: 1e-4, BF16: 3e-2, torch.complex128: 1e-9}


# ------------------------------------------------------------------------------------------------ helpers
def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dev(x: Any) -> Any:
    """``x`` on the device: tensors (leaves stay leaves, with their ``requires_grad``), TT objects, containers."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(DEVICE).requires_grad_(x.requires_grad)
    if isinstance(x, tt.TensorTrainBase):
        return x.to(DEVICE)
    if isinstance(x, (list, tuple)):
        return type(x)(dev(v) for v in x)
    return x


def on_device(x: Any, what: str = "result", where: torch.device = DEVICE) -> None:
    """Every tensor in ``x`` (cores of TT objects, parameters and buffers of modules) is on the device (or on
    ``where``: in a function :func:`both` runs on either side, the side's own device)."""
    if isinstance(x, torch.Tensor):
        assert x.device == where, f"{what}: a tensor on {x.device}, expected {where}"
    elif isinstance(x, tt.TensorTrainBase):
        for k, c in enumerate(x.tt_cores):
            on_device(c, f"{what} core {k}", where)
    elif isinstance(x, nn.Module):
        for name, t in [*x.named_parameters(), *x.named_buffers()]:
            on_device(t, f"{what} {name}", where)
    elif isinstance(x, (list, tuple)):
        for k, v in enumerate(x):
            on_device(v, f"{what}[{k}]", where)


def close(got: torch.Tensor, want: torch.Tensor, what: str = "result", rtol: float | None = None) -> None:
    """``got`` is on the device and equals the CPU's ``want`` (absolute tolerance scaled by its largest entry)."""
    on_device(got, what)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, expected {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    rtol = RTOL.get(want.dtype, 1e-4) if rtol is None else rtol
    if want.dtype in (torch.bool, torch.int64, torch.int32):
        assert torch.equal(got.cpu(), want), what
        return
    scale = float(want.detach().abs().max()) if want.numel() else 1.0
    torch.testing.assert_close(
        got.detach().cpu(),
        want.detach(),
        rtol=rtol,
        atol=rtol * max(scale, 1e-30),
        msg=lambda m: f"{what}: {m}",
    )


def matches(
    got: Any, want: Any, what: str = "result", *, full: bool = False, rtol: float | None = None
) -> None:
    """``got`` (from the device) equals ``want`` (from the CPU), recursively. TT objects: the same class and ranks,
    and the same cores, or (``full``) the same dense tensor (factors unique only up to a gauge)."""
    if isinstance(want, tt.TensorTrainBase):
        assert type(got) is type(want), f"{what}: {type(got).__name__}, expected {type(want).__name__}"
        assert got.tt_ranks == want.tt_ranks, f"{what}: ranks {got.tt_ranks}, expected {want.tt_ranks}"
        on_device(got, what)
        if full:
            close(tt.full(got), tt.full(want), f"{what} (full)", rtol)
        else:
            for k, (a, b) in enumerate(zip(got.tt_cores, want.tt_cores, strict=True)):
                close(a, b, f"{what} core {k}", rtol)
    elif isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), f"{what}: {type(got).__name__}, expected a tensor"
        close(got, want, what, rtol)
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), what
        for k, (a, b) in enumerate(zip(got, want, strict=True)):
            matches(a, b, f"{what}[{k}]", full=full, rtol=rtol)
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=rtol or 1e-9, abs_tol=1e-12), f"{what}: {got} != {want}"
    else:
        assert got == want, f"{what}: {got!r} != {want!r}"


def both(fn: Callable[..., Any], *args: Any, full: bool = False, rtol: float | None = None) -> Any:
    """``fn`` on the CPU arguments and on their device copies: the device's result matches. Returns it."""
    want = fn(*args)
    got = fn(*dev(args))
    matches(got, want, getattr(fn, "__name__", "result"), full=full, rtol=rtol)
    return got


def grads_both(fn: Callable[..., torch.Tensor], *leaves: torch.Tensor, rtol: float | None = None) -> None:
    """The output of ``fn(*leaves)`` and its gradients with respect to every leaf, on both sides."""
    want = fn(*leaves)
    g_out = torch.randn(want.shape, generator=_gen(7), dtype=want.dtype)
    want_grads = torch.autograd.grad(want, leaves, g_out)
    dleaves = dev(leaves)
    got = fn(*dleaves)
    close(got, want.detach(), "output", rtol)
    for k, (a, b) in enumerate(zip(torch.autograd.grad(got, dleaves, dev(g_out)), want_grads, strict=True)):
        close(a, b, f"gradient {k}", rtol)


def t3(dtype: torch.dtype = F64, seed: int = 0, ranks: tuple[int, ...] = (1, 2, 3, 1)) -> tt.TensorTrain:
    return random_tt((3, 4, 5), ranks, gen=_gen(seed), dtype=dtype)


def mat(rows: tuple[int, ...], cols: tuple[int, ...], seed: int = 0, dtype: torch.dtype = F64, rank: int = 2):
    ranks = (1, *([rank] * (len(rows) - 1)), 1)
    return random_tt((rows, cols), ranks, gen=_gen(seed), dtype=dtype)


def batch3(seed: int = 0, dtype: torch.dtype = F64) -> tt.TensorTrainBatch:
    return random_tt((3, 4, 5), (1, 2, 3, 1), gen=_gen(seed), dtype=dtype, batch_size=4)


def vec_batch(seed: int = 0) -> tt.TensorTrainBatch:
    return random_tt(((2, 3), (1, 1)), (1, 2, 1), gen=_gen(seed), batch_size=3)


def dense(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=dtype)


# ------------------------------------------------------------------------------------------ construction
RANDOM_CTORS: dict[str, Callable[..., Any]] = {
    "random_tensor": lambda **kw: tt.random_tensor((3, 4, 5), tt_rank=3, **kw),
    "random_matrix": lambda **kw: tt.random_matrix(((2, 3), (4, 2)), tt_rank=3, **kw),
    "random_tensor_batch": lambda **kw: tt.random_tensor_batch((3, 4), tt_rank=2, batch_size=3, **kw),
    "random_matrix_batch": lambda **kw: tt.random_matrix_batch(
        ((2, 3), (4, 2)), tt_rank=2, batch_size=3, **kw
    ),
    "tensor_with_random_cores": lambda **kw: tt.tensor_with_random_cores((3, 4), tt_rank=2, **kw),
    "matrix_with_random_cores": lambda **kw: tt.matrix_with_random_cores(((2, 3), (4, 2)), tt_rank=2, **kw),
    "tensor_batch_with_random_cores": lambda **kw: tt.tensor_batch_with_random_cores(
        (3, 4), tt_rank=2, batch_size=2, **kw
    ),
    "matrix_batch_with_random_cores": lambda **kw: tt.matrix_batch_with_random_cores(
        ((2, 3), (4, 2)), tt_rank=2, batch_size=2, **kw
    ),
    "glorot_initializer": lambda **kw: tt.glorot_initializer(((2, 3), (4, 2)), tt_rank=2, **kw),
    "he_initializer": lambda **kw: tt.he_initializer(((2, 3), (4, 2)), tt_rank=2, **kw),
    "lecun_initializer": lambda **kw: tt.lecun_initializer(((2, 3), (4, 2)), tt_rank=2, **kw),
}
CONSTANT_CTORS: dict[str, Callable[..., Any]] = {
    "tensor_ones": lambda **kw: tt.tensor_ones((3, 4), **kw),
    "tensor_zeros": lambda **kw: tt.tensor_zeros((3, 4), **kw),
    "matrix_ones": lambda **kw: tt.matrix_ones(((2, 3), (4, 2)), **kw),
    "matrix_zeros": lambda **kw: tt.matrix_zeros(((2, 3), (4, 2)), **kw),
    "eye": lambda **kw: tt.eye((2, 3), **kw),
}


@pytest.mark.parametrize("name", list(RANDOM_CTORS))
@pytest.mark.parametrize("dtype", [F64, F32])
def test_random_constructors_take_device_and_dtype(name, dtype):
    """``device=`` puts every core there, with a generator on that device; so does a default-device context."""
    make = RANDOM_CTORS[name]
    a = make(dtype=dtype, device=DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(0))
    on_device(a, name)
    assert a.dtype == dtype and all(bool(torch.isfinite(c).all()) for c in a.tt_cores)
    b = make(dtype=dtype, device=DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip(a.tt_cores, b.tt_cores, strict=True)), "not reproducible"
    with torch.device(DEVICE):
        on_device(make(dtype=dtype), f"{name} under torch.device()")


@pytest.mark.parametrize("name", list(CONSTANT_CTORS))
def test_constant_constructors_match_the_cpu(name):
    make = CONSTANT_CTORS[name]
    matches(make(dtype=F32, device=DEVICE), make(dtype=F32), name)
    matches(make(device=DEVICE), make(), name)
    with torch.device(DEVICE):
        on_device(make(), f"{name} under torch.device()")


def test_like_constructors_and_moves():
    a = t3()
    d = a.to(DEVICE)
    matches(tt.ones_like(d), tt.ones_like(a), "ones_like")
    matches(tt.zeros_like(d), tt.zeros_like(a), "zeros_like")
    matches(d.cpu().to(DEVICE), a, ".cpu().to()")
    assert d.cpu().device.type == "cpu" and d.device == DEVICE
    matches(d.float(), a.float(), ".float()")
    matches(d.clone(), a, ".clone()")
    matches(d.detach(), a, ".detach()")
    matches(dev(batch3())[1:3], batch3()[1:3], "batch slice")
    if CUDA:
        matches(a.cuda(), a, ".cuda()")
        matches(a.cuda(DEVICE.index), a, ".cuda(index)")


def test_variables_on_the_device():
    a = t3()
    params = tt.tt_parameters(a.to(DEVICE))
    on_device(list(params), "tt_parameters")
    view = tt.tt_from_parameters(params)
    matches(view, a, "tt_from_parameters")
    b = t3(seed=1)
    tt.assign(params, b.to(DEVICE))
    matches(tt.tt_from_parameters(params), b, "assign")
    tt.assign(params, b.to(F32))  # (a CPU float32 source: copied into the device's float64 parameters)
    matches(tt.tt_from_parameters(params), tt.cast(tt.cast(b, F32), F64), "assign from the CPU")


# ------------------------------------------------------------------------------- TT-SVD, round, orthogonalize
@pytest.mark.parametrize("method", ["auto", "exact"])
@pytest.mark.parametrize("dtype", [F64, F32])
def test_to_tt_tensor_and_matrix(method, dtype):
    x = dense((4, 5, 6), dtype=dtype)
    w = dense((6, 20), seed=1, dtype=dtype)
    both(lambda t: tt.to_tt_tensor(t, 3, method=method), x, full=True)
    both(lambda t: tt.to_tt_tensor(t, epsilon=0.3, method=method), x, full=True)
    both(lambda t: tt.to_tt_tensor(t, method=method), x, full=True)  # (max ranks: lossless)
    both(lambda t: tt.to_tt_matrix(t, [[2, 3], [4, 5]], 3, method=method), w, full=True)
    both(
        lambda t: tt.to_tt_matrix(t, [[2, 3], None], epsilon=0.2, method=method),
        dense((6,), 2, dtype),
        full=True,
    )
    xb = dense((3, 4, 5, 6), seed=3, dtype=dtype)
    both(lambda t: tt.to_tt_tensor(t, 3, method=method, batch=True), xb, full=True)


def _low_rank_plus_noise(shape: tuple[int, ...], rank: int) -> torch.Tensor:
    base = tt.full(random_tt(shape, (1, *([rank] * (len(shape) - 1)), 1), gen=_gen(5)))
    return base + 1e-3 * dense(shape, seed=6)


def test_randomized_svd_meets_the_cpu_error():
    """The randomized sketch draws other numbers on another device: the same ranks and a comparable error."""
    x = _low_rank_plus_noise((24, 20, 18), 3)
    want = tt.to_tt_tensor(x, 3, method="randomized")
    got = tt.to_tt_tensor(x.to(DEVICE), 3, method="randomized")
    on_device(got, "to_tt_tensor randomized")
    assert got.tt_ranks == want.tt_ranks
    err_cpu = float(torch.linalg.vector_norm(tt.full(want) - x))
    err_dev = float(torch.linalg.vector_norm(tt.full(got).cpu() - x))
    assert err_dev <= 1.05 * err_cpu + 1e-12 and err_dev < 1e-2 * float(torch.linalg.vector_norm(x))
    w = _low_rank_plus_noise((30, 24), 4)
    want_m = tt.to_tt_matrix(w, [[5, 6], [4, 6]], 4, method="randomized")
    got_m = tt.to_tt_matrix(w.to(DEVICE), [[5, 6], [4, 6]], 4, method="randomized")
    on_device(got_m, "to_tt_matrix randomized")
    err_cpu = float(torch.linalg.vector_norm(tt.full(want_m) - w))
    err_dev = float(torch.linalg.vector_norm(tt.full(got_m).cpu() - w))
    assert got_m.tt_ranks == want_m.tt_ranks and err_dev <= 1.05 * err_cpu + 1e-12
    big = random_tt((6, 6, 6, 6), (1, 6, 12, 6, 1), gen=_gen(8))
    r_cpu = tt.round(big, 3, method="randomized")
    r_dev = tt.round(big.to(DEVICE), 3, method="randomized")
    on_device(r_dev, "round randomized")
    err_cpu = float(tt.frobenius_norm(r_cpu - big))
    err_dev = float(tt.frobenius_norm(r_dev - big.to(DEVICE)))
    assert r_dev.tt_ranks == r_cpu.tt_ranks and err_dev <= 1.05 * err_cpu + 1e-12


@pytest.mark.parametrize("method", ["auto", "exact"])
def test_round(method):
    a = random_tt((3, 4, 5, 3), (1, 3, 6, 3, 1), gen=_gen(1))
    both(lambda x: tt.round(x, 2, method=method), a, full=True)
    both(lambda x: tt.round(x, epsilon=0.2, method=method), a, full=True)
    both(lambda x: tt.round(x + x, 4, method=method), a, full=True)  # (rank 12 down to the exact 4)
    both(lambda x: tt.round(x, 2, method=method), batch3(), full=True)
    both(lambda x: tt.round(x, 2, method=method), mat((2, 3, 2), (3, 2, 2), rank=4), full=True)
    both(lambda x: tt.round(x, 2, method=method), t3(F32), full=True)


@pytest.mark.parametrize("left_to_right", [True, False])
def test_orthogonalize(left_to_right):
    for a in (t3(), batch3(), mat((2, 3, 2), (3, 2, 2), rank=3), t3(F32)):
        got = both(lambda x: tt.orthogonalize(x, left_to_right), a, full=True)
        cores = got.tt_cores if isinstance(got, tt.TensorTrainBatch) else [c[None] for c in got.tt_cores]
        kept = cores[:-1] if left_to_right else cores[1:]
        for c in kept:  # the swept cores are orthonormal (the last, or the first, holds the norm)
            b, r_out = c.shape[0], c.shape[-1] if left_to_right else c.shape[1]
            q = c.reshape(b, -1, r_out) if left_to_right else c.reshape(b, r_out, -1).mH
            eye = torch.eye(r_out, dtype=c.dtype, device=DEVICE).expand(b, r_out, r_out)
            close(q.mH @ q, eye.cpu(), "orthonormality", rtol=1e-5 if c.dtype == F32 else 1e-9)


# ------------------------------------------------------------------------------------------------ algebra
def _scale_dev(x: tt.TensorTrain) -> tt.TensorTrain:
    return tt.multiply(x, torch.tensor(-2.5, dtype=F64, device=x.device))


ALGEBRA: dict[str, tuple[Callable[..., Any], Callable[[], tuple]]] = {
    "full": (tt.full, lambda: (t3(),)),
    "full batch": (tt.full, lambda: (batch3(),)),
    "full matrix": (tt.full, lambda: (mat((2, 3), (4, 2)),)),
    "add": (tt.add, lambda: (t3(), t3(seed=1))),
    "add batch": (tt.add, lambda: (batch3(), t3(seed=1))),
    "subtract": (tt.subtract, lambda: (t3(), t3(seed=1))),
    "hadamard": (tt.multiply, lambda: (t3(), t3(seed=1))),
    "scale": (lambda x: tt.multiply(x, -2.5), lambda: (t3(),)),
    "scale 0-dim device tensor": (_scale_dev, lambda: (t3(),)),
    "scale 0-dim cpu tensor": (lambda x: tt.multiply(x, torch.tensor(-2.5, dtype=F64)), lambda: (t3(),)),
    "operators": (lambda x, y: (x + y) * 2.0 - x * y, lambda: (t3(), t3(seed=1))),
    "kron": (tt.kron, lambda: (mat((2, 3), (2, 2)), mat((3,), (2,), seed=1))),
    "transpose": (tt.transpose, lambda: (mat((2, 3), (4, 2)),)),
    "matmul tt tt": (tt.matmul, lambda: (mat((2, 3), (4, 2)), mat((4, 2), (3, 3), seed=1))),
    "matmul tt dense": (tt.matmul, lambda: (mat((2, 3), (4, 2)), dense((8, 5)))),
    "matmul dense tt": (tt.matmul, lambda: (dense((5, 6)), mat((2, 3), (4, 2)))),
    "matmul operator": (lambda a, b: a @ b, lambda: (mat((2, 3), (4, 2)), dense((8, 3)))),
    "flat_inner": (tt.flat_inner, lambda: (t3(), t3(seed=1))),
    "flat_inner dense": (tt.flat_inner, lambda: (t3(), dense((3, 4, 5)))),
    "flat_inner batch": (tt.flat_inner, lambda: (batch3(), batch3(seed=1))),
    "frobenius_norm": (tt.frobenius_norm, lambda: (t3(),)),
    "frobenius_norm batch": (tt.frobenius_norm, lambda: (batch3(),)),
    "frobenius_norm_squared": (lambda x: tt.frobenius_norm_squared(x, differentiable=True), lambda: (t3(),)),
    "quadratic_form": (
        tt.quadratic_form,
        lambda: (mat((2, 3), (2, 3)), random_tt(((2, 3), (1, 1)), (1, 2, 1), gen=_gen(1))),
    ),
    "bilinear_form": (
        tt.bilinear_form,
        lambda: (
            mat((2, 3), (3, 2)),
            random_tt(((2, 3), (1, 1)), (1, 2, 1), gen=_gen(1)),
            random_tt(((3, 2), (1, 1)), (1, 2, 1), gen=_gen(2)),
        ),
    ),
    "bilinear_form_two_mat": (
        tt.bilinear_form_two_mat,
        lambda: (
            random_tt(((2, 3), (1, 1)), (1, 2, 1), gen=_gen(1)),
            mat((2, 3), (3, 2)),
            mat((3, 2), (2, 2), seed=3),
            random_tt(((2, 2), (1, 1)), (1, 2, 1), gen=_gen(2)),
        ),
    ),
    "renormalize_tt_cores": (tt.renormalize_tt_cores, lambda: (t3(),)),
    "cast": (lambda x: tt.cast(x, F32), lambda: (t3(),)),
    "gather_nd": (tt.gather_nd, lambda: (t3(), torch.tensor([[0, 1, 2], [2, 3, 4], [1, 0, 0]]))),
    "gather_nd batch": (tt.gather_nd, lambda: (batch3(), torch.tensor([[0, 1, 2, 3], [3, 2, 3, 4]]))),
    "gather_nd list": (lambda x: tt.gather_nd(x, [[0, 1, 2], [2, 3, 4]]), lambda: (t3(),)),
    "getitem": (lambda x: x[1, :, 2:4], lambda: (t3(),)),
    "getitem reversed": (lambda x: x[::-1, 2, ::2], lambda: (t3(),)),
    "batch int": (lambda x: x[2], lambda: (batch3(),)),
    "batch negative step": (lambda x: x[::-2], lambda: (batch3(),)),
    "batch list": (lambda x: x[[3, 0, 0]], lambda: (batch3(),)),
    "batch index tensor": (lambda x, i: x[i], lambda: (batch3(), torch.tensor([1, 3]))),
    "batch cpu index tensor": (lambda x: x[torch.tensor([1, 3])], lambda: (batch3(),)),
    "batch mask": (lambda x, m: x[m], lambda: (batch3(), torch.tensor([True, False, True, True]))),
    "concat_along_batch_dim": (
        lambda a, b: tt.concat_along_batch_dim([a, b, a]),
        lambda: (batch3(), t3(seed=1)),
    ),
    "gram_matrix": (tt.gram_matrix, lambda: (vec_batch(),)),
    "gram_matrix A": (tt.gram_matrix, lambda: (vec_batch(), mat((2, 3), (2, 3), seed=2))),
    "pairwise_flat_inner": (tt.pairwise_flat_inner, lambda: (batch3(), batch3(seed=1))),
    "pairwise_flat_inner A": (
        tt.pairwise_flat_inner,
        lambda: (vec_batch(), vec_batch(seed=1), mat((2, 3), (2, 3), seed=2)),
    ),
    "multiply_along_batch_dim": (tt.multiply_along_batch_dim, lambda: (batch3(), dense((4,)))),
    "multiply_along_batch_dim list": (
        lambda x: tt.multiply_along_batch_dim(x, [1.0, -2.0, 0.5, 3.0]),
        lambda: (batch3(),),
    ),
    "multiply_along_batch_dim cpu weights": (
        lambda x: tt.multiply_along_batch_dim(x, torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)),
        lambda: (batch3(),),
    ),
    "kronecker inv": (tt.kronecker.inv, lambda: (_kron_spd(),)),
    "kronecker determinant": (tt.kronecker.determinant, lambda: (_kron_spd(),)),
    "kronecker slog_determinant": (tt.kronecker.slog_determinant, lambda: (_kron_spd(),)),
    "kronecker cholesky": (tt.kronecker.cholesky, lambda: (_kron_spd(),)),
    "kronecker batch": (tt.kronecker.inv, lambda: (_kron_spd(batch=2),)),
    "l2_regularizer": (tt.l2_regularizer(0.3), lambda: (t3(),)),
    "cores_regularizer": (tt.cores_regularizer(lambda c: c.abs().sum(), 0.3), lambda: (t3(),)),
    "linear": (C.linear, lambda: (dense((5, 8)), mat((2, 3), (4, 2)), dense((6,), seed=3))),
    "tt_dense_matmul": (C.tt_dense_matmul, lambda: (mat((2, 3), (4, 2)), dense((2, 8, 3)))),
    "dense_tt_matmul": (C.dense_tt_matmul, lambda: (dense((2, 3, 6)), mat((2, 3), (4, 2)))),
}


def _kron_spd(batch: int | None = None) -> tt.TensorTrainBase:
    """A Kronecker product of symmetric positive-definite factors (TT-rank 1)."""
    cores = []
    for k, n in enumerate((2, 3)):
        b = dense((batch or 1, n, n), seed=10 + k)
        f = b @ b.mT + n * torch.eye(n, dtype=F64)
        cores.append(f[:, None, :, :, None] if batch else f[0][None, :, :, None])
    return tt.TensorTrainBatch(cores) if batch else tt.TensorTrain(cores)


@pytest.mark.parametrize("name", list(ALGEBRA))
def test_algebra(name):
    fn, inputs = ALGEBRA[name]
    both(fn, *inputs())


@pytest.mark.parametrize(
    "name",
    ["full", "add", "hadamard", "matmul tt tt", "matmul tt dense", "flat_inner", "frobenius_norm", "linear"],
)
def test_algebra_float32(name):
    fn, inputs = ALGEBRA[name]
    both(fn, *[x.float() if isinstance(x, torch.Tensor) else tt.cast(x, F32) for x in inputs()])


def test_gradients_through_the_algebra():
    a_cores = [c.requires_grad_() for c in random_cores((3, 4, 5), (1, 2, 3, 1), gen=_gen(0))]
    b_cores = [c.requires_grad_() for c in random_cores((3, 4, 5), (1, 3, 2, 1), gen=_gen(1))]
    x = dense((3, 4, 5), seed=2).requires_grad_()

    def fn(*leaves: torch.Tensor) -> torch.Tensor:
        a, b = tt.TensorTrain(leaves[:3]), tt.TensorTrain(leaves[3:6])
        return torch.stack(
            [
                tt.flat_inner(a * b, a + b),
                tt.frobenius_norm(a, differentiable=True),
                tt.flat_inner(a, leaves[6]),
                tt.gather_nd(b, torch.tensor([[0, 1, 2]])).sum(),
                tt.full(tt.round(a + b, 3)).square().sum(),
            ]
        )

    grads_both(fn, *a_cores, *b_cores, x)


# ------------------------------------------------------------------------------------ approximate, riemannian
def test_approximate():
    both(lambda a, b, c: tt.approximate.add_n([a, b, c], 3), t3(), t3(seed=1), t3(seed=2), full=True)
    both(lambda b: tt.approximate.reduce_sum_batch(b, 3), batch3(), full=True)
    both(lambda b, w: tt.approximate.reduce_sum_batch(b, 3, coef=w), batch3(), dense((4,)), full=True)
    both(lambda b, w: tt.approximate.reduce_sum_batch(b, 3, coef=w), batch3(), dense((4, 2)), full=True)
    both(lambda b: tt.approximate.reduce_sum_batch(b, 3, coef=[1.0, 2.0, -1.0, 0.5]), batch3(), full=True)


RIEMANNIAN: dict[str, tuple[Callable[..., Any], Callable[[], tuple]]] = {
    "project": (tt.project, lambda: (t3(seed=1), t3())),
    "project dense": (tt.project, lambda: (dense((3, 4, 5)), t3())),
    "project batch": (tt.project, lambda: (batch3(1), t3())),
    "project_sum": (tt.project_sum, lambda: (batch3(1), t3(), dense((4,), seed=2))),
    "project_sum unweighted": (tt.project_sum, lambda: (batch3(1), t3())),
    "project_matmul": (
        tt.project_matmul,
        lambda: (
            random_tt(((2, 3), (1, 1)), (1, 2, 1), gen=_gen(1)),
            random_tt(((2, 3), (1, 1)), (1, 2, 1), gen=_gen(2)),
            mat((2, 3), (2, 3), seed=3),
        ),
    ),
    "add_n_projected": (
        lambda x, y, w: tt.add_n_projected([tt.project(x, w), tt.project(y, w)], coef=[2.0, -1.0]),
        lambda: (t3(seed=1), t3(seed=2), t3()),
    ),
    "add_n_projected tensor coef": (
        lambda x, y, w, c: tt.add_n_projected([tt.project(x, w), tt.project(y, w)], coef=c),
        lambda: (t3(seed=1), t3(seed=2), t3(), dense((2,), seed=3)),
    ),
    "gradients": (
        lambda x, t: tt.gradients(lambda z: tt.flat_inner(z, t) ** 2, x),
        lambda: (t3(), t3(seed=1)),
    ),
    "hessian_vector_product": (
        lambda x, t, v: tt.hessian_vector_product(lambda z: tt.flat_inner(z, t) ** 2, x, v),
        lambda: (t3(), t3(seed=1), t3(seed=2)),
    ),
}


@pytest.mark.parametrize("name", list(RIEMANNIAN))
def test_riemannian(name):
    fn, inputs = RIEMANNIAN[name]
    both(fn, *inputs(), full=True)  # (tangent vectors' cores carry the QR gauge of the point)


def test_tangent_tools():
    """Quantities that do not depend on the frame's gauge: inner products, and deltas' norms."""
    both(
        lambda a, b, w: tt.pairwise_flat_inner_projected(tt.project(a, w), tt.project(b, w)),
        batch3(1),
        batch3(2),
        t3(),
    )

    def delta_norms(x: tt.TensorTrain, w: tt.TensorTrain) -> torch.Tensor:
        deltas = tt.tangent_space_to_deltas(tt.project(x, w))
        on_device(deltas, "tangent_space_to_deltas", x.device)
        return torch.stack([torch.linalg.vector_norm(d) for d in deltas])

    both(delta_norms, t3(seed=1), t3())


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_riemannian_sgd(momentum):
    def steps(x: tt.TensorTrain, target: tt.TensorTrain) -> tt.TensorTrain:
        params = tt.tt_parameters(x)
        opt = tt.optim.RiemannianSGD(params, lr=0.1, momentum=momentum)
        for _ in range(3):
            opt.zero_grad()
            tt.frobenius_norm_squared(tt.tt_from_parameters(params) - target, differentiable=True).backward()
            opt.step()
        on_device(list(params), "parameters after the steps", x.device)
        if momentum:
            on_device(opt.state[params[0]]["direction"], "momentum state", x.device)
        return tt.tt_from_parameters(params).detach()

    both(steps, t3(), t3(seed=1), full=True)

    def rgrad(x: tt.TensorTrain, g: list[torch.Tensor]) -> tt.TensorTrain:
        return tt.optim.riemannian_gradient_from_cores(x, g)

    x = t3()
    both(rgrad, x, [dense(c.shape, seed=k) for k, c in enumerate(x.tt_cores)], full=True)


def test_regularizer_gradients():
    cores = [c.requires_grad_() for c in random_cores((3, 4, 5), (1, 2, 3, 1), gen=_gen(0))]
    grads_both(lambda *c: tt.l2_regularizer(0.5)(tt.TensorTrain(c)), *cores)
    grads_both(lambda *c: tt.cores_regularizer(lambda k: k.square().sum(), 0.5)(tt.TensorTrain(c)), *cores)


# ---------------------------------------------------------------------------------------------- TTLinear
def _layer(dtype: torch.dtype = F64, **kw: Any) -> tt.nn.TTLinear:
    torch.manual_seed(0)
    kw = {"tt_rank": 3, "in_dims": (2, 3, 4), "out_dims": (5, 2, 2), **kw}
    return tt.nn.TTLinear(24, 20, dtype=dtype, **kw)


def _layer_both(layer: nn.Module, x: torch.Tensor, train: bool) -> None:
    """A layer and its device copy: the same output (and, training, gradients of input, cores and bias)."""
    d_layer = copy.deepcopy(layer).to(DEVICE)
    on_device(d_layer, "layer")
    if not train:
        with torch.no_grad():
            for _ in range(2):  # (the second call reads the merged cores the first one kept)
                close(d_layer(dev(x)), layer(x), "inference output")
        return
    params = [p for p in layer.parameters() if p.requires_grad]
    d_params = [p for p in d_layer.parameters() if p.requires_grad]
    xs = x.detach().requires_grad_()
    grads_both_modules = torch.autograd.grad(layer(xs).square().sum(), [xs, *params])
    dx = dev(xs)
    got = torch.autograd.grad(d_layer(dx).square().sum(), [dx, *d_params])
    for k, (a, b) in enumerate(zip(got, grads_both_modules, strict=True)):
        close(a, b, "input gradient" if k == 0 else f"parameter gradient {k - 1}")


@pytest.mark.parametrize("strategy", C.STRATEGIES)
@pytest.mark.parametrize("batch", [1, 9, 300])
def test_tt_linear_every_strategy(strategy, batch):
    layer = _layer()
    layer.strategy = strategy
    x = dense((batch, 24), seed=1)
    _layer_both(layer, x, train=True)
    _layer_both(layer, x, train=False)


@pytest.mark.parametrize("max_saved", [0, 4096])
@pytest.mark.parametrize("batch", [9, 300])
def test_tt_linear_memory_bound(max_saved, batch):
    """A bound on the saved activations: recomputing sweeps (their states in scratch) and rebuilt W."""
    layer = _layer()
    layer.max_saved_bytes = max_saved
    _layer_both(layer, dense((batch, 24), seed=1), train=True)


def test_every_contraction_plan():
    """Every plan the planner knows (full at each split, both sweeps for every grouping), forward and
    backward, and inference at a batch large enough for chunked sweeps."""
    cores = [
        c.requires_grad_() for c in random_cores(((2, 3, 2, 2), (3, 2, 2, 2)), (1, 3, 4, 3, 1), gen=_gen(0))
    ]
    bias = dense((24,), seed=1).requires_grad_()
    x = dense((9, 24), seed=2).requires_grad_()
    for p in C.enumerate_plans(cores, 9, requires_grad=True):
        grads_both(lambda x, b, *cs, p=p: C.linear(x, cs, b, strategy=p), x, bias, *cores)
    big = dense((4096, 24), seed=3)
    with torch.no_grad():
        for p in C.enumerate_plans(cores, 4096):
            both(lambda x, *cs, p=p: C.linear(x, cs, strategy=p), big, *[c.detach() for c in cores])


def test_tt_linear_float32_and_leading_dims():
    layer = _layer(F32)
    x = dense((2, 3, 24), seed=1, dtype=F32)
    _layer_both(layer, x, train=True)
    _layer_both(layer, x, train=False)


def test_tt_linear_padded_and_frozen():
    torch.manual_seed(0)
    padded = tt.nn.TTLinear(23, 19, tt_rank=3, pad=True, dtype=F64)
    assert padded.padded
    _layer_both(padded, dense((7, 23), seed=1), train=True)
    _layer_both(padded, dense((7, 23), seed=1), train=False)
    frozen = _layer()
    frozen.cores.requires_grad_(False)
    _layer_both(frozen, dense((9, 24), seed=1), train=True)


def test_tt_linear_large_w_in_scratch():
    """A dense W of 8 MiB (float64 1024 x 1024) built for the full plan: blocked, in scratch memory on the CPU."""
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(1024, 1024, tt_rank=8, in_dims=(8, 8, 16), out_dims=(8, 8, 16), dtype=F64)
    layer.strategy = "full"
    x = dense((64, 1024), seed=1)
    _layer_both(layer, x, train=False)
    _layer_both(layer, x, train=True)


def test_tt_linear_inference_cache_after_to():
    """Merged cores kept on the CPU are not reused after ``.to(device)``; in-place updates on the device are seen."""
    layer = _layer().eval()
    x = dense((64, 24), seed=1)
    with torch.no_grad():
        want = layer(x)
        layer(dense((1, 24), seed=2))  # (fill the cache at another batch size too)
        layer.to(DEVICE)
        on_device(layer, "layer after .to()")
        close(layer(dev(x)), want, "output after .to()")
        close(layer(dev(x)), want, "output after .to() (cached)")
        layer.cores[1].mul_(2.0)
        close(layer(dev(x)), layer.cpu()(x), "output after an in-place update")


def test_tt_linear_plan_and_conversions():
    layer = _layer().to(DEVICE)
    for batch in (1, 64, 4096):
        for grad in (False, True):
            assert layer.plan(batch, requires_grad=grad).batch_size == batch
    torch.manual_seed(0)
    linear = nn.Linear(24, 20, dtype=F64)
    for eps in (None, 0.3):
        rank = 3 if eps is None else None
        want = tt.nn.TTLinear.from_linear(
            linear, max_tt_rank=rank, epsilon=eps, in_dims=(2, 3, 4), out_dims=(5, 2, 2)
        )
        got = tt.nn.TTLinear.from_linear(
            copy.deepcopy(linear).to(DEVICE),
            max_tt_rank=rank,
            epsilon=eps,
            in_dims=(2, 3, 4),
            out_dims=(5, 2, 2),
        )
        on_device(got, "from_linear")
        assert got.tt_ranks == want.tt_ranks
        close(got.dense_weight(), want.dense_weight().detach(), "from_linear weight")
        close(got.bias, want.bias.detach(), "from_linear bias")
        back = got.to_linear()
        on_device(back, "to_linear")
        close(back.weight, want.to_linear().weight.detach(), "to_linear weight")
    half = tt.nn.TTLinear.from_linear(nn.Linear(24, 20, device=DEVICE, dtype=BF16), max_tt_rank=3)
    on_device(half, "from_linear bfloat16")
    assert half.cores[0].dtype == BF16
    w = mat((5, 2, 2), (2, 3, 4), rank=3)
    matches(tt.nn.TTLinear.from_tt(w.to(DEVICE)).weight, w, "from_tt")
    matches(layer.load_tt_(w, bias=[0.5] * 20).weight, w, "load_tt_ from the CPU")
    close(layer.bias, torch.full((20,), 0.5, dtype=F64), "load_tt_ bias from a list")


def test_functional_tt_linear():
    w, x, b = mat((5, 2, 2), (2, 3, 4), rank=3), dense((4, 24), seed=1), dense((20,), seed=2)
    both(tt.nn.functional.tt_linear, x, w, b)
    if DEVICE.type != "cpu":  # a CPU input for a device weight: refused (as F.linear), never moved silently
        with pytest.raises(tt.ShapeError, match="on cpu but the TT-matrix has dtype torch.float64 on"):
            tt.nn.functional.tt_linear(x, w.to(DEVICE), b.to(DEVICE))


# ------------------------------------------------------------------------------------------- TTEmbedding
def _embedding(padding_idx: int | None = 3) -> tt.nn.TTEmbedding:
    torch.manual_seed(0)
    return tt.nn.TTEmbedding(
        60, 12, tt_rank=3, voc_dims=(3, 4, 5), emb_dims=(2, 3, 2), padding_idx=padding_idx, dtype=F64
    )


@pytest.mark.parametrize("tokens", [5, 4096])  # few rows: core by core; many: through the merged halves
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_tt_embedding(tokens, padding_idx):
    emb = _embedding(padding_idx)
    idx = torch.randint(0, 60, (tokens,), generator=_gen(1))
    idx[:2] = 3
    d_emb = copy.deepcopy(emb).to(DEVICE)
    on_device(d_emb, "embedding")
    g_out = dense((tokens, 12), seed=2)
    want = emb(idx)
    want_grads = torch.autograd.grad(want, list(emb.cores), g_out)
    got = d_emb(dev(idx))
    close(got, want.detach(), "lookup")
    for k, (a, b) in enumerate(
        zip(torch.autograd.grad(got, list(d_emb.cores), dev(g_out)), want_grads, strict=True)
    ):
        close(a, b, f"core gradient {k}")
    with torch.no_grad():
        for _ in range(2):  # (the second call reads the halves the first one kept)
            close(d_emb(dev(idx)), want.detach(), "inference lookup")
    both(
        lambda i, w: tt.nn.functional.tt_embedding(i, w, padding_idx=padding_idx), idx.view(-1, 1), emb.weight
    )
    with pytest.raises(IndexError, match="out-of-range"):
        d_emb(torch.tensor([0, 60], device=DEVICE))


def test_tt_embedding_conversions():
    torch.manual_seed(0)
    table = nn.Embedding(60, 12, padding_idx=3, dtype=F64)
    want = tt.nn.TTEmbedding.from_embedding(table, max_tt_rank=4, voc_dims=(3, 4, 5), emb_dims=(2, 3, 2))
    got = tt.nn.TTEmbedding.from_embedding(
        copy.deepcopy(table).to(DEVICE), max_tt_rank=4, voc_dims=(3, 4, 5), emb_dims=(2, 3, 2)
    )
    on_device(got, "from_embedding")
    assert got.tt_ranks == want.tt_ranks and got.padding_idx == 3
    back = got.to_embedding()
    on_device(back, "to_embedding")
    close(back.weight, want.to_embedding().weight.detach(), "to_embedding table")
    idx = torch.arange(60)
    close(got(dev(idx)), want(idx).detach(), "lookup after from_embedding")


# ------------------------------------------------------------------------------------------------ compress
def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Embedding(64, 32), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    ).double()


def test_compress_a_model_on_the_device():
    model = _mlp()
    want_model, want_report = tt.compress(model, max_tt_rank=4)
    got_model, got_report = tt.compress(copy.deepcopy(model).to(DEVICE), max_tt_rank=4)
    on_device(got_model, "compressed model")
    assert [layer.replaced for layer in got_report.layers] == [layer.replaced for layer in want_report.layers]
    assert any(layer.replaced for layer in got_report.layers)
    assert got_report.params_after == want_report.params_after
    for a, b in zip(got_report.layers, want_report.layers, strict=True):
        assert (a.rel_error is None) == (b.rel_error is None)
        if a.rel_error is not None:
            assert math.isclose(a.rel_error, b.rel_error, rel_tol=1e-6, abs_tol=1e-12), a.name
    idx = torch.randint(0, 64, (16,), generator=_gen(1))
    close(got_model(dev(idx)), want_model(idx).detach(), "compressed model output")
    _, eps_report = tt.compress(copy.deepcopy(model).to(DEVICE), epsilon=0.5, dry_run=True)
    assert eps_report.layers
    dense_again = tt.decompress(got_model)
    on_device(dense_again, "decompressed model")
    close(dense_again(dev(idx)), want_model(idx).detach(), "decompressed model output")


# ------------------------------------------------------------------------------------------- save and load
def test_save_and_load(tmp_path):
    for k, obj in enumerate((t3(), batch3(), mat((2, 3), (4, 2)))):
        path = tmp_path / f"{k}.safetensors"
        tt.save(obj.to(DEVICE), path, metadata={"k": str(k)})
        on_cpu = tt.load(path)
        assert on_cpu.device.type == "cpu"
        assert all(torch.equal(a, b) for a, b in zip(on_cpu.tt_cores, obj.tt_cores, strict=True))
        back = tt.load(path, device=DEVICE)
        on_device(back, "tt.load(device=)")
        assert all(torch.equal(a.cpu(), b) for a, b in zip(back.tt_cores, obj.tt_cores, strict=True))
        assert tt.read_metadata(path) == {"k": str(k)}


def test_layer_state_dicts_and_pickles_between_devices(tmp_path):
    layer = _layer()
    d_layer = copy.deepcopy(layer).to(DEVICE)
    x = dense((5, 24), seed=1)
    with torch.no_grad():
        d_layer(dev(x))  # (a cache to leave behind)
    fresh = _layer()
    fresh.load_state_dict(d_layer.state_dict())  # device -> cpu
    assert all(p.device.type == "cpu" for p in fresh.parameters())
    assert all(torch.equal(a, b.cpu()) for a, b in zip(fresh.parameters(), d_layer.parameters(), strict=True))
    other = copy.deepcopy(d_layer)
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    other.load_state_dict(layer.state_dict())  # cpu -> device
    on_device(other, "layer after load_state_dict from the CPU")
    with torch.no_grad():
        close(other(dev(x)), layer(x), "output after load_state_dict")
    # a state of other ranks (after rounding) resizes the device layer's cores on the device
    small = copy.deepcopy(layer).load_tt_(tt.round(layer.weight, 2))
    other.load_state_dict(small.state_dict())
    on_device(other, "layer after a rank-changing load")
    assert other.tt_ranks == small.tt_ranks
    path = tmp_path / "layer.pt"
    torch.save(d_layer, path)
    for where in ("cpu", DEVICE):
        loaded = torch.load(path, map_location=where, weights_only=False)
        assert all(p.device == torch.device(where) for p in loaded.parameters())
        with torch.no_grad():
            close(loaded(x.to(where)).to(DEVICE), layer(x), f"pickled layer loaded to {where}")
    emb = _embedding()
    d_emb = copy.deepcopy(emb).to(DEVICE)
    emb2 = _embedding()
    emb2.load_state_dict(d_emb.state_dict())
    assert all(torch.equal(a, b.cpu()) for a, b in zip(emb2.parameters(), d_emb.parameters(), strict=True))


# ----------------------------------------------------------------------------------- autocast and compile
@pytest.mark.parametrize("batch", [1, 9, 300])
def test_autocast_bfloat16(batch):
    """Under autocast a float32 TTLinear returns what nn.Linear returns (bfloat16 where autocast lowers matmuls),
    and trains with gradients in the parameters' own dtype."""
    layer = _layer(F32).to(DEVICE)
    linear = layer.to_linear()
    x = dense((batch, 24), seed=1, dtype=F32).to(DEVICE)
    with torch.autocast(DEVICE.type, dtype=BF16):
        want = linear(x)
        got = layer(x)
        with torch.no_grad():
            got_inference = layer(x)
    on_device([got, got_inference])
    assert got.dtype == want.dtype == got_inference.dtype
    ref = linear(x).detach()
    scale = float(ref.abs().max())
    for y in (got, got_inference):
        torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05 * scale)
    got.float().square().sum().backward()
    assert all(
        p.grad is not None and p.grad.dtype == F32 and p.grad.device == DEVICE for p in layer.parameters()
    )


@needs_cuda
# inductor warns on GPUs with TF32 tensor cores that float32 matmuls do not use them (a hint, not a fault)
@pytest.mark.filterwarnings("ignore:TensorFloat32 tensor cores:UserWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_tt_linear_forward_and_backward():
    torch._dynamo.reset()
    try:
        layer = _layer(F32).to(DEVICE)
        x = dense((64, 24), seed=1, dtype=F32).to(DEVICE)
        compiled = torch.compile(layer, fullgraph=True)
        y = compiled(x)
        on_device(y)
        want = layer(x)
        scale = float(want.detach().abs().max())
        torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4 * scale)
        got = torch.autograd.grad(y.square().sum(), list(layer.parameters()))
        ref = torch.autograd.grad(want.square().sum(), list(layer.parameters()))
        for a, b in zip(got, ref, strict=True):
            on_device(a, "compiled gradient")
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), want.detach(), rtol=1e-4, atol=1e-4 * scale)
    finally:
        torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------- CUDA graphs
def _captured(module: nn.Module, static_input: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """An inference forward of ``module`` captured in a CUDA graph (after a warm-up on a side stream, as torch's
    docs do it: plans chosen and tuned, merged cores kept), and its static output."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):
            module(static_input)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_output = module(static_input)
    return graph, static_output


def _replays_match(graph: torch.cuda.CUDAGraph, out: torch.Tensor, want: Callable[[], torch.Tensor]) -> None:
    graph.replay()
    with torch.no_grad():
        expected = want()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@needs_cuda
@pytest.mark.parametrize("strategy", ["auto", "full", "grouped_rtl", "cores_ltr", "tune"])
@pytest.mark.parametrize("batch", [1, 64])
def test_cuda_graph_capture_and_replay(strategy, batch):
    """An inference forward captured once, replayed on new inputs; in-place updates of the cores (an optimizer
    step between replays) are seen by the replay, as a captured nn.Linear sees its weight's."""
    layer = _layer(F32).to(DEVICE).eval()
    layer.strategy = strategy
    static_x = torch.randn(batch, 24, device=DEVICE)
    graph, static_y = _captured(layer, static_x)
    for seed in (1, 2):
        static_x.copy_(torch.randn(batch, 24, generator=_gen(seed)).to(DEVICE))
        _replays_match(graph, static_y, lambda: layer(static_x))
    with torch.no_grad():
        layer.cores[0].mul_(2.0)
        layer.bias.add_(1.0)
    _replays_match(graph, static_y, lambda: nn.functional.linear(static_x, layer.dense_weight(), layer.bias))


@needs_cuda
@pytest.mark.parametrize("tokens", [5, 4096])
def test_cuda_graph_capture_of_an_embedding(tokens):
    """A lookup reads no index on the host while captured (no range check, no unique rows), as nn.Embedding."""
    emb = _embedding().float().to(DEVICE).eval()
    static_idx = torch.randint(0, 60, (tokens,), device=DEVICE)
    graph, static_rows = _captured(emb, static_idx)
    for seed in (1, 2):
        idx = torch.randint(0, 60, (tokens,), generator=_gen(seed))
        idx[0] = 3  # (the padding row)
        static_idx.copy_(idx.to(DEVICE))
        _replays_match(graph, static_rows, lambda: emb(static_idx))
    with torch.no_grad():
        emb.cores[1].mul_(2.0)
    _replays_match(graph, static_rows, lambda: nn.functional.embedding(static_idx, emb.to_embedding().weight))


# ------------------------------------------------------------------------------------------------ workspace
def test_workspace_scratch_on_the_device():
    tt.workspace.empty_cache()
    nbytes = 2 * tt.workspace.MIN_BYTES
    with tt.workspace.scratch((nbytes // 4,), F32, DEVICE) as buf:
        assert buf.device == DEVICE and buf.dtype == F32 and buf.shape == (nbytes // 4,)
        buf.fill_(1.0)
    with tt.workspace.scratch((4, 8), F64, DEVICE) as small:
        assert small.device == DEVICE and small.shape == (4, 8)
    if DEVICE.type == "cpu":
        assert tt.workspace.held_bytes() >= nbytes
    else:  # (only the CPU's buffers are kept: CUDA's caching allocator reuses memory itself)
        assert tt.workspace.held_bytes() == 0
    tt.workspace.empty_cache()
    assert tt.workspace.held_bytes() == 0
