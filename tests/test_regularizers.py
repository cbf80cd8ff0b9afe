"""Regularizers: values against the dense tensor / cores, gradients, modules with TT layers, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tensortrain as tt
from conftest import assert_close
from strategies import random_tt
from test_riemannian import dense


def test_l2_regularizer_matches_dense_and_is_differentiable(gen):
    x = random_tt(((2, 3), (3, 2)), (1, 3, 1), gen=gen)
    assert_close(tt.l2_regularizer(0.3)(x), 0.3 * (dense(x) ** 2).sum())
    b = random_tt((2, 3, 2), (1, 2, 2, 1), gen=gen, batch_size=3)
    assert_close(tt.l2_regularizer(2.0)(b), 2.0 * (dense(b) ** 2).sum())
    cores = [c.clone().requires_grad_() for c in random_tt((2, 3, 2), (1, 2, 2, 1), gen=gen).tt_cores]
    assert torch.autograd.gradcheck(lambda *c: tt.l2_regularizer(0.7)(tt.TensorTrain(c)), cores)


def test_cores_regularizer_sums_over_cores(gen):
    x = random_tt((2, 3, 4), (1, 2, 3, 1), gen=gen)
    reg = tt.cores_regularizer(lambda c: c.abs().sum(), 0.5)
    assert_close(reg(x), 0.5 * sum(c.abs().sum() for c in x.tt_cores))
    with pytest.raises(ValueError, match="must return a scalar"):
        tt.cores_regularizer(lambda c: c, 1.0)(x)


def test_regularizers_work_in_a_torch_training_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        tt.nn.TTLinear(12, 8, tt_rank=2, in_dims=(3, 4), out_dims=(2, 4), dtype=torch.float64),
        torch.nn.ReLU(),
        tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3), dtype=torch.float64),
    )
    reg = tt.l2_regularizer(0.1)
    expected = 0.1 * sum((tt.full(m.weight) ** 2).sum() for m in (model[0], model[2]))
    value = reg(model)
    assert_close(value, expected)
    loss = model(torch.randn(5, 12, dtype=torch.float64)).pow(2).mean() + value
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_validation(gen):
    with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
        tt.l2_regularizer(-1.0)
    with pytest.raises(TypeError, match="scale must be a real number"):
        tt.cores_regularizer(lambda c: c.sum(), "1")
    with pytest.raises(TypeError, match="must be callable"):
        tt.cores_regularizer(3, 1.0)
    with pytest.raises(ValueError, match="has no TT weights"):
        tt.l2_regularizer(1.0)(torch.nn.Linear(2, 3))
    with pytest.raises(TypeError, match="expected a TT object"):
        tt.l2_regularizer(1.0)(torch.ones(3))
    assert float(tt.l2_regularizer(0)(random_tt((2, 2), (1, 2, 1), gen=gen))) == 0.0


def test_an_empty_list_is_not_taken_for_a_tt_s_cores():
    """An empty list or tuple holds no cores: refused as an unsupported argument, not read as a TT without cores."""
    for reg in (tt.l2_regularizer(1.0), tt.cores_regularizer(lambda c: c.sum(), 1.0)):
        for empty in ([], ()):
            with pytest.raises(TypeError, match="expected a TT object, one TT's cores"):
                reg(empty)


def test_keras_dense_layers_are_regularized():
    """tensortrain.keras.KerasDense (t3f's layer) holds its TT as .matrix, not .weight."""
    import importlib.util
    import os
    import subprocess
    import sys

    code = (
        "import os; os.environ['KERAS_BACKEND'] = 'torch'\n"
        "import keras, torch, tensortrain as tt\n"
        "from tensortrain.keras import KerasDense\n"
        "layer = KerasDense([2, 3], [3, 2], tt_rank=2)\n"
        "model = keras.Sequential([keras.Input((6,)), layer])\n"
        "want = 0.1 * float(tt.frobenius_norm_squared(layer.matrix))\n"
        "for m in (model, layer):\n"
        "    assert abs(float(tt.l2_regularizer(0.1)(m)) - want) < 1e-5 * want\n"
    )
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_tied_tt_weights_count_once():
    """A head sharing an embedding's cores (the TT form of tied input and output embeddings) was penalized twice,
    where the same layer used twice and model.parameters() count it once."""
    emb = tt.nn.TTEmbedding(100, 16, tt_rank=4, voc_dims=(4, 5, 5), emb_dims=(4, 2, 2), dtype=torch.float64)
    head = tt.nn.TTLinear(
        16, 100, tt_rank=4, in_dims=(4, 2, 2), out_dims=(4, 5, 5), bias=False, dtype=torch.float64
    )
    head.cores = emb.cores
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    for reg in (tt.l2_regularizer(1.0), tt.cores_regularizer(lambda c: (c**2).sum(), 1.0)):
        assert_close(reg(model), reg(emb))
    # a pruned core is a new masked tensor at every access: the tie is found by the parameters behind it
    torch.nn.utils.prune.random_unstructured(emb.cores, name="0", amount=0.3)
    for reg in (tt.l2_regularizer(1.0), tt.cores_regularizer(lambda c: (c**2).sum(), 1.0)):
        assert_close(reg(model), reg(emb))


def test_layers_built_from_the_same_parameters_differently_all_count():
    """Ties are found core by core, in order: the same parameters in another order, a core used twice, or the
    same cores pruned in one layer only are other weights (a set of ids merged them and dropped a layer)."""
    reg = tt.l2_regularizer(1.0)
    dims = {"in_dims": (4, 4, 4, 4), "out_dims": (4, 4, 4, 4), "tt_rank": 2, "dtype": torch.float64}
    a, b = tt.nn.TTLinear(256, 256, **dims), tt.nn.TTLinear(256, 256, **dims)
    b.cores = torch.nn.ParameterList([a.cores[0], a.cores[2], a.cores[1], a.cores[3]])
    c = tt.nn.TTLinear(256, 256, **dims)
    c.cores[2] = c.cores[1]
    d = tt.nn.TTLinear(64, 64, in_dims=(4, 4, 4), out_dims=(4, 4, 4), tt_rank=2, dtype=torch.float64)
    d.cores = torch.nn.ParameterList([c.cores[0], c.cores[1], c.cores[3]])
    e = tt.nn.TTLinear(256, 256, **dims)
    e.cores = torch.nn.ParameterList(list(a.cores))
    torch.nn.utils.prune.l1_unstructured(e.cores, "0", 0.9)
    for pair in ((a, b), (c, d), (a, e)):
        model = torch.nn.ModuleDict({"x": pair[0], "y": pair[1]})
        dense = sum((tt.full(m.weight) ** 2).sum() for m in pair)
        assert_close(reg(model), dense)
    # a DataParallel replica keeps its cores as plain attributes (an empty ParameterList): still two layers
    replica = torch.nn.ModuleDict({"x": a, "y": c})._replicate_for_data_parallel()
    for name, layer in (("x", a), ("y", c)):
        r = layer._replicate_for_data_parallel()
        r.cores = layer.cores._replicate_for_data_parallel()
        for k, p in enumerate(layer.cores):
            setattr(r.cores, str(k), p * 1.0)
        replica._modules[name] = r
    assert_close(reg(replica), reg(torch.nn.ModuleDict({"x": a, "y": c})))


@pytest.mark.parametrize("scale", [float("inf"), float("nan"), pytest.param(10**400, id="int-past-float")])
@pytest.mark.parametrize("make", [tt.l2_regularizer, lambda s: tt.cores_regularizer(lambda c: c.sum(), s)])
def test_regularizers_refuse_a_scale_that_is_not_finite(make, scale):
    # (test_regularizers.py, test_validation) "ValueError: scale is negative or not finite"
    with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
        make(scale)


def test_a_tensor_scale_multiplies_as_a_number_does_in_float16():
    """A 0-dim tensor scale was cast to a float16 layer's dtype before the product: 1e-8 became 0."""
    layer = tt.nn.TTLinear(64, 64, tt_rank=4, dtype=torch.float16)
    for scale in (1e-5, 1e-8):
        by_number = tt.l2_regularizer(scale)(layer)
        by_tensor = tt.l2_regularizer(torch.tensor(scale))(layer)
        assert by_tensor.dtype == torch.float16 and by_tensor.item() == by_number.item() > 0


def test_scale_may_be_a_0_dim_tensor():
    """t3f documents scale as a scalar Tensor; a 0-dim tensor raised TypeError."""
    x = tt.TensorTrain([torch.ones(1, 2, 1), torch.ones(1, 3, 1)])
    assert float(tt.l2_regularizer(torch.tensor(0.5))(x)) == 3.0
    assert float(tt.cores_regularizer(lambda c: c.sum(), np.float32(2.0))(x)) == 10.0
    # as t3f reads its scalar Tensor on every call: a learned or scheduled scale works
    scale = torch.tensor(0.5, requires_grad=True)
    reg = tt.l2_regularizer(scale)
    reg(x).backward()
    assert float(scale.grad) == 6.0
    with torch.no_grad():
        scale.fill_(0.0)
    assert float(reg(x).detach()) == 0.0
    # the loss keeps the cores' dtype, as with a number scale (a float64 0-dim tensor promoted it)
    assert tt.l2_regularizer(torch.tensor(0.5, dtype=torch.float64))(x).dtype == torch.float32
    assert (
        tt.cores_regularizer(lambda c: c.sum(), torch.tensor(2.0, dtype=torch.float64))(x).dtype
        == torch.float32
    )
    with pytest.raises(TypeError, match="scale must be a real number"):
        tt.l2_regularizer(torch.tensor(True))
    with pytest.raises(ValueError, match="finite number >= 0"):
        tt.l2_regularizer(torch.tensor(-1.0))


def test_tied_weights_of_a_custom_layer_count_once():
    """A module whose TT weight is built from a ParameterList not named ``cores``: two such layers over one list
    are one TT (the key is the cores, not the weight object)."""

    class Layer(torch.nn.Module):
        def __init__(self, params):
            super().__init__()
            self.p = params

        @property
        def weight(self):
            return tt.TensorTrain(list(self.p))

    shared = torch.nn.ParameterList(
        [torch.nn.Parameter(torch.ones(1, 2, 1)), torch.nn.Parameter(torch.ones(1, 3, 1))]
    )
    model = torch.nn.Sequential(Layer(shared), Layer(shared))
    assert float(tt.l2_regularizer(1.0)(model).detach()) == pytest.approx(6.0)
