"""tt.variables: TT cores as nn.Parameters on a module, reading them back, assigning in place."""

from __future__ import annotations

import pytest
import torch

import tensortrain as tt
from conftest import assert_close
from strategies import random_tt
from tensortrain import ops, variables


class _Holder(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.cores = variables.tt_parameters(value)

    def forward(self, x):
        return x @ variables.tt_from_parameters(self.cores)


def test_parameters_register_and_train(gen):
    w = random_tt(((2, 3), (2, 2)), (1, 2, 1), gen=gen)
    m = _Holder(w)
    assert [tuple(p.shape) for p in m.parameters()] == [tuple(c.shape) for c in w.tt_cores]
    assert all(isinstance(p, torch.nn.Parameter) for p in m.cores)
    view = variables.tt_from_parameters(m.cores)
    assert view.is_variable() and str(view).startswith("A TT-Matrix variable")
    assert_close(ops.full(view), ops.full(w))
    # The parameters are copies, not aliases of the value's cores.
    assert all(p.data_ptr() != c.data_ptr() for p, c in zip(m.cores, w.tt_cores, strict=True))
    x = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    m(x).pow(2).sum().backward()
    grads = [p.grad for p in m.cores]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    # Gradients match the same computation on a differentiable copy of the cores.
    cores = [c.clone().requires_grad_() for c in w.tt_cores]
    (x @ tt.TensorTrain(cores)).pow(2).sum().backward()
    for g, c in zip(grads, cores, strict=True):
        assert_close(g, c.grad)


def test_parameters_batch_and_requires_grad(gen):
    b = random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=3)
    params = variables.tt_parameters(b, requires_grad=False)
    assert not any(p.requires_grad for p in params)
    view = variables.tt_from_parameters(params, batch=True)
    assert isinstance(view, tt.TensorTrainBatch)
    assert_close(ops.full(view), ops.full(b))
    # (without batch=True the error named a boundary rank only)
    for x in (b, tt.random_matrix_batch(((2, 3), (3, 2)), tt_rank=2, batch_size=3)):
        with pytest.raises(
            tt.ShapeError, match=r"every core has leading size 3, as a batch's: pass batch=True"
        ):
            variables.tt_from_parameters(tt.tt_parameters(x))
    with pytest.raises(tt.ShapeError, match=r"boundary TT-ranks must be 1, got r_0=2 and r_d=2 \([^;]*$"):
        variables.tt_from_parameters([torch.ones(2, 3, 2)] * 2)  # (a TT-tensor's cores, not a batch's)


def test_assign_in_place(gen):
    params = variables.tt_parameters(random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen))
    ptrs = [p.data_ptr() for p in params]
    new = random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen)
    res = variables.assign(params, new)
    assert [p.data_ptr() for p in params] == ptrs
    assert all(r is p for r, p in zip(res.tt_cores, params, strict=True))
    assert_close(ops.full(res), ops.full(new))
    assert all(p.grad_fn is None for p in params)
    # A TT view over the parameters is a valid target too; values are cast like copy_.
    res2 = variables.assign(res, ops.cast(new * 2.0, torch.float32))
    assert res2.dtype == torch.float64
    assert_close(ops.full(res2), 2.0 * ops.full(new), rtol=1e-6, atol=1e-6)


def test_assign_into_complex_parameters(gen):
    def make():
        cores = [torch.randn(1, 2, 2, dtype=torch.complex128, generator=gen)]
        return tt.TensorTrain([*cores, torch.randn(2, 3, 1, dtype=torch.complex128, generator=gen)])

    params, new = variables.tt_parameters(make()), make()
    res = variables.assign(params, new)
    assert res.dtype == torch.complex128
    assert_close(ops.full(res), ops.full(new))


def test_assign_errors(gen):
    params = variables.tt_parameters(random_tt((2, 3), (1, 2, 1), gen=gen))
    with pytest.raises(
        tt.ShapeError,
        match=r"assign: core 0 has shape \(1, 2, 2\) but the value's core has shape \(1, 2, 3\)",
    ):
        variables.assign(params, random_tt((2, 3), (1, 3, 1), gen=gen))
    with pytest.raises(tt.ShapeError, match="assign: params hold 2 cores but the value has 3"):
        variables.assign(params, random_tt((2, 3, 2), (1, 2, 2, 1), gen=gen))
    with pytest.raises(TypeError, match="assign: tt must be a TensorTrain"):
        variables.assign(params, torch.ones(2))
    with pytest.raises(
        TypeError,
        match="assign: params must be an nn.ParameterList, a sequence of tensors or a TT object, got Tensor",
    ):
        variables.assign(torch.ones(2), random_tt((2, 3), (1, 2, 1), gen=gen))
    with pytest.raises(TypeError, match=r"assign: params\[1\] is a float"):
        variables.assign([params[0], 1.0], random_tt((2, 3), (1, 2, 1), gen=gen))
    with pytest.raises(TypeError, match="tt_parameters: tt must be a TensorTrain"):
        variables.tt_parameters([torch.ones(1, 2, 1)])
    with pytest.raises(
        TypeError,
        match="tt_from_parameters: expects an nn.ParameterList or a sequence of tensors, got Tensor",
    ):
        variables.tt_from_parameters(torch.ones(1, 2, 1))


def test_assign_refuses_complex_values_for_real_parameters(gen):
    x = random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen)
    params = tt.tt_parameters(x)
    z = tt.TensorTrain([c.to(torch.complex128) * (1 + 1j) for c in x.tt_cores])
    with pytest.raises(TypeError, match="assign: cannot cast a complex TT"):
        tt.assign(params, z)
    assert all(torch.equal(p, c) for p, c in zip(params, x.tt_cores, strict=True))


def test_assign_a_value_that_shares_memory_with_the_targets():
    """Swapping or transposing the parameters' own cores: each value core must be read before it is written."""
    x = tt.TensorTrain([torch.randn(1, 3, 1, dtype=torch.float64), torch.randn(1, 3, 1, dtype=torch.float64)])
    p = tt.tt_parameters(x)
    v = tt.tt_from_parameters(p)
    swapped = tt.TensorTrain([v.tt_cores[1], v.tt_cores[0]])
    want = tt.full(swapped).detach().clone()
    assert torch.allclose(tt.full(tt.assign(p, swapped)), want)
    w = tt.random_matrix([[3, 3], [3, 3]], tt_rank=2, dtype=torch.float64)
    q = tt.tt_parameters(w)
    want = tt.full(tt.transpose(w))
    assert torch.allclose(tt.full(tt.assign(q, tt.transpose(tt.tt_from_parameters(q)))), want)


# yes/no flags take NumPy's bool as they take Python's
def test_flags_take_numpy_bools(gen):
    np = pytest.importorskip("numpy")
    params = tt.tt_parameters(random_tt((2, 3), (1, 2, 1), gen=gen), requires_grad=np.bool_(False))
    assert not any(p.requires_grad for p in params)


# assigning a batch gives a batch view over the parameters (not a TT-matrix of the 4-D
# cores)
def test_assign_a_batch_returns_a_batch(gen):
    params = tt.tt_parameters(random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=3))
    value = random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=3)
    out = tt.assign(params, value)
    assert isinstance(out, tt.TensorTrainBatch) and out.batch_size == 3 and not out.is_tt_matrix()
    assert_close(tt.full(out), tt.full(value))


# a value core that views a target at an offset is read before that target is overwritten
def test_assign_a_value_viewing_a_target_at_an_offset(gen):
    params = torch.nn.ParameterList(
        [
            torch.nn.Parameter(torch.randn(1, 6, 1, generator=gen, dtype=torch.float64)),
            torch.nn.Parameter(torch.randn(1, 4, 1, generator=gen, dtype=torch.float64)),
        ]
    )
    old = params[0].detach().clone()
    new0 = torch.randn(1, 6, 1, generator=gen, dtype=torch.float64)
    value = tt.TensorTrain([new0, params[0].detach()[:, 2:6]])  # core 1 views params[0] from element 2 on
    expected = tt.full(tt.TensorTrain([new0, old[:, 2:6]]))
    out = tt.assign(params, value)
    assert_close(params[1].detach(), old[:, 2:6])
    assert_close(tt.full(out), expected)


def test_assign_checks_every_target_before_writing_any():
    """Targets sharing memory got the last write (full(result) off by 96 from the value); an integer or expanded
    target failed after the targets before it were overwritten."""
    value = tt.random_tensor((2, 3, 2), tt_rank=2, dtype=torch.float64)
    cores = [torch.zeros_like(c) for c in value.tt_cores]
    with pytest.raises(ValueError, match="params entry 0 and params entry 2 share memory"):
        tt.assign([cores[0], cores[1], cores[0].view(cores[2].shape)], value)
    buffer = torch.zeros(100, dtype=torch.float64)
    views = [buffer[:4].view(1, 2, 2), buffer[3:15].view(2, 3, 2), buffer[20:24].view(2, 2, 1)]
    with pytest.raises(ValueError, match="params entry 0 and params entry 1 share memory"):
        tt.assign(views, value)
    disjoint = [buffer[:4].view(1, 2, 2), buffer[4:16].view(2, 3, 2), buffer[16:20].view(2, 2, 1)]
    assert_close(tt.full(tt.assign(disjoint, value)), tt.full(value))  # (views of one flat buffer, as FSDP's)
    ints = [torch.zeros(c.shape, dtype=torch.long) for c in value.tt_cores]
    with pytest.raises(TypeError, match=r"params\[0\] has dtype torch.int64"):
        tt.assign(ints, value)
    assert not any(c.any() for c in ints)
    expanded = [torch.zeros_like(value.tt_cores[0]), torch.zeros(2, 1, 2).expand(2, 3, 2), cores[2]]
    with pytest.raises(ValueError, match="params entry 1 is an expanded view"):
        tt.assign(expanded, value.to(torch.float32))
    assert not expanded[0].any()
    with pytest.raises(ValueError, match="on the meta device and has no data"):
        tt.assign(cores, value.to("meta"))


def test_assign_sees_memory_shared_through_other_storages_and_inference_targets():
    """Two NumPy views over one buffer are two storages: their overlap was missed and the last write won (0.91 off).
    An inference-mode target failed after the targets before it were written."""
    import numpy as np

    value = tt.random_tensor((2, 3, 2), tt_rank=2, dtype=torch.float64)
    arr = np.zeros(64)
    views = [torch.from_numpy(arr[0:4]).view(1, 2, 2), torch.from_numpy(arr[2:14]).view(2, 3, 2)]
    with pytest.raises(ValueError, match="params entry 0 and params entry 1 share memory"):
        tt.assign([*views, torch.zeros(2, 2, 1, dtype=torch.float64)], value)
    with torch.inference_mode():
        frozen = torch.zeros(2, 3, 2, dtype=torch.float64)
    first = torch.zeros(1, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"params\[1\] was made under torch.inference_mode"):
        tt.assign([first, frozen, torch.zeros(2, 2, 1, dtype=torch.float64)], value)
    assert not first.any()
