"""TensorTrain / TensorTrainBatch: validation, derived properties, printing, conversions."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import tensortrain as tt
from conftest import assert_close
from strategies import random_cores, random_tt


def test_str_matches_t3f_matrix(gen):
    a = random_tt(((4, 7, 4, 7), (5, 5, 5, 5)), (1, 2, 2, 2, 1), gen=gen)
    assert str(a) == (
        "A TT-Matrix of size 784 x 625, underlying tensor shape: (4, 7, 4, 7) x (5, 5, 5, 5), "
        "TT-ranks: (1, 2, 2, 2, 1)"
    )
    # repr adds what str (t3f's text) does not show when it is not the default, as torch.Tensor's repr does
    assert repr(a) == str(a) + " (dtype=torch.float64)"
    assert repr(a.to(torch.float32)) == str(a)
    grad = tt.TensorTrain([c.float().requires_grad_() for c in a.tt_cores]).to("meta")
    assert repr(grad).endswith("(device='meta', requires_grad=True)")


def test_str_matches_t3f_tensor_and_batches(gen):
    assert (
        str(random_tt((3, 4, 5), (1, 2, 2, 1), gen=gen))
        == "A Tensor Train of shape (3, 4, 5), TT-ranks: (1, 2, 2, 1)"
    )
    b = random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen, batch_size=5)
    assert str(b) == "A 5 element batch of Tensor Trains of shape (2, 3, 4), TT-ranks: (1, 2, 2, 1)"
    m = random_tt(((2, 2, 2), (3, 3, 3)), (1, 4, 4, 1), gen=gen, batch_size=5)
    assert str(m) == (
        "A 5 element batch of TT-matrices of size 8 x 27, underlying tensor shape: (2, 2, 2) x (3, 3, 3), "
        "TT-ranks: (1, 4, 4, 1)"
    )


def test_variable_word_for_parameters(gen):
    cores = [torch.nn.Parameter(c) for c in random_cores((3, 4), (1, 2, 1), gen=gen)]
    assert str(tt.TensorTrain(cores)).startswith("A Tensor Train variable of shape (3, 4)")


def test_properties_tensor(gen):
    a = random_tt((3, 4, 5), (1, 2, 3, 1), gen=gen)
    assert a.tt_ranks == a.ranks == a.get_tt_ranks() == (1, 2, 3, 1)
    assert a.raw_shape == (3, 4, 5) and a.get_raw_shape() == ((3, 4, 5),)
    assert a.shape == torch.Size([3, 4, 5]) == a.get_shape()
    assert a.ndims() == 3 and not a.is_tt_matrix()
    assert a.dtype == torch.float64 and a.device == torch.device("cpu")
    assert a.num_parameters() == 1 * 3 * 2 + 2 * 4 * 3 + 3 * 5 * 1
    assert a.tt_cores is a.cores and len(a.tt_cores) == 3


def test_properties_matrix_and_batch(gen):
    m = random_tt(((2, 3), (4, 5)), (1, 3, 1), gen=gen, batch_size=7)
    assert m.is_tt_matrix() and m.batch_size == 7 == len(m)
    assert m.raw_shape == ((2, 3), (4, 5)) and m.shape == torch.Size([7, 6, 20])
    assert m.tt_ranks == (1, 3, 1)
    assert isinstance(m[2], tt.TensorTrain) and m[2].shape == torch.Size([6, 20])
    torch.testing.assert_close(m[-1].tt_cores[0], m.tt_cores[0][-1])
    assert m[1:4].batch_size == 3 and m[[0, 6]].batch_size == 2
    assert len(list(m)) == 7
    with pytest.raises(IndexError, match="out of range"):
        m[7]
    with pytest.raises(IndexError, match="selects no elements"):
        m[3:3]


def test_conversions(gen):
    a = random_tt((3, 4), (1, 2, 1), gen=gen)
    b = a.to(torch.float32)
    assert b.dtype == torch.float32 and a.dtype == torch.float64
    c = a.clone().requires_grad_()
    assert c.requires_grad and not a.requires_grad
    assert not c.detach().requires_grad
    assert c.cpu().device.type == "cpu"


def test_validation_errors(gen):
    with pytest.raises(tt.ShapeError, match="at least one core"):
        tt.TensorTrain([])
    with pytest.raises(TypeError, match="sequence of core tensors"):
        tt.TensorTrain(torch.ones(1, 2, 1))
    with pytest.raises(TypeError, match="core 1 is a list"):
        tt.TensorTrain([torch.ones(1, 2, 1), [1.0]])
    with pytest.raises(tt.ShapeError, match="do not chain.*core 0 has shape \\(1, 2, 3\\)"):
        tt.TensorTrain([torch.ones(1, 2, 3), torch.ones(2, 2, 1)])
    with pytest.raises(tt.ShapeError, match="boundary TT-ranks must be 1"):
        tt.TensorTrain([torch.ones(2, 2, 1)])
    # the last rank too, where the ranks chain (the fast check only sends these to the full one)
    with pytest.raises(tt.ShapeError, match=r"boundary TT-ranks must be 1, got r_0=1 and r_d=2"):
        tt.TensorTrain([torch.ones(1, 2, 3), torch.ones(3, 4, 2)])
    with pytest.raises(tt.ShapeError, match=r"r_0=1 and r_d=3"):
        tt.TensorTrainBatch([torch.ones(2, 1, 2, 3), torch.ones(2, 3, 4, 3)])
    with pytest.raises(tt.ShapeError, match="3 dims \\(TT-tensor\\) or 4 dims"):
        tt.TensorTrain([torch.ones(2, 1)])
    with pytest.raises(tt.ShapeError, match="same number of dims"):
        tt.TensorTrain([torch.ones(1, 2, 1, 1), torch.ones(1, 2, 1)])
    with pytest.raises(tt.ShapeError, match="dtype"):
        tt.TensorTrain([torch.ones(1, 2, 1), torch.ones(1, 2, 1, dtype=torch.float64)])
    with pytest.raises(TypeError, match="floating point"):
        tt.TensorTrain([torch.ones(1, 2, 1, dtype=torch.int64)])
    with pytest.raises(tt.ShapeError, match="empty dimension"):
        tt.TensorTrain([torch.ones(1, 0, 1)])
    with pytest.raises(tt.ShapeError, match="batch sizes differ"):
        tt.TensorTrainBatch([torch.ones(2, 1, 2, 1), torch.ones(3, 1, 2, 1)])
    with pytest.raises(tt.ShapeError, match="4 dims \\(TT-tensor\\) or 5 dims"):
        tt.TensorTrainBatch([torch.ones(1, 2, 1)])


def test_requires_grad_when_any_core_requires_grad(gen):
    a = random_tt((3, 4, 5), (1, 2, 2, 1), gen=gen)
    cores = list(a.tt_cores)
    cores[1] = cores[1].clone().requires_grad_()
    b = tt.TensorTrain(cores)
    assert b.requires_grad and not a.requires_grad
    assert repr(b).endswith("(dtype=torch.float64, requires_grad=True)")


def test_to_another_tensor_checks_its_dtype(gen):
    # x.to(tensor) casts to that tensor's dtype: the same checks as a dtype given by itself
    a = random_tt((3, 4), (1, 2, 1), gen=gen)
    with pytest.raises(TypeError, match="cannot cast a complex TT"):
        a.to(torch.complex128).to(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype must be a floating point or complex torch.dtype"):
        a.to(torch.zeros(2, dtype=torch.int64))
    assert a.to(torch.zeros(2, dtype=torch.float32)).dtype == torch.float32


def test_to_complex32_is_refused_by_the_cast_check(gen):
    a = random_tt((3, 4), (1, 2, 1), gen=gen)
    with pytest.raises(TypeError, match=r"TensorTrain.to: complex32 has almost no kernels"):
        a.to(torch.complex32)
    with pytest.raises(TypeError, match=r"TensorTrainBatch.to: complex32"):
        random_tt((3, 4), (1, 2, 1), gen=gen, batch_size=2).to(dtype=torch.complex32)


def _factorizations(n: int, d: int, low: int = 1) -> list[tuple[int, ...]]:
    """Every ascending factorization of n into d factors (brute force, small n)."""
    if d == 1:
        return [(n,)] if n >= low else []
    return [(f, *rest) for f in range(low, n + 1) if n % f == 0 for rest in _factorizations(n // f, d - 1, f)]


def test_auto_shape_is_the_most_balanced_factorization():
    """Smallest largest factor, then smallest sum, over all factorizations (the greedy heuristic it replaced
    gave (6, 12) for 72 and (6, 8, 12) for 576)."""
    assert tt.auto_shape(72, 2) == (8, 9)
    assert tt.auto_shape(576, 3) == (8, 8, 9)
    assert tt.auto_shape(360, 3) == (5, 8, 9)
    for n in [*range(1, 200), 240, 288, 336, 420, 504, 600, 720, 1000, 1024, 3072, 5040]:
        for d in range(1, 5):
            best = min(_factorizations(n, d), key=lambda f: (max(f), sum(f)))
            got = tt.auto_shape(n, d)
            assert (max(got), sum(got)) == (max(best), sum(best)) and math.prod(got) == n, (n, d, got, best)
            assert list(got) == sorted(got)


def test_auto_shape_results_are_pinned():
    """The default dims of TTLinear/TTEmbedding come from auto_shape: a changed tie-break between equally
    balanced factorizations ((5, 8, 9, 10) and (6, 6, 10, 10) for 3600) would give every saved layer of that
    size other core shapes, so its checkpoints would no longer load into a layer built the same way."""
    pinned = {
        (784, 4): (4, 4, 7, 7),
        (625, 4): (5, 5, 5, 5),
        (3072, 4): (6, 8, 8, 8),
        (3600, 4): (5, 8, 9, 10),
        (768, 3): (8, 8, 12),
        (30522, 4): (1, 2, 3, 5087),
        (50257, 3): (1, 29, 1733),
        (128, 2): (8, 16),
        (4620, 3): (11, 20, 21),  # the smallest largest factor first: (14, 15, 22) has the smaller sum
    }
    for (n, d), dims in pinned.items():
        assert tt.auto_shape(n, d) == dims, (n, d)


def test_shapes_helpers():
    assert tt.auto_shape(784, 4) == (4, 4, 7, 7)
    assert tt.auto_shape(625, 4) == (5, 5, 5, 5)
    assert tt.auto_shape(4096, 4) == (8, 8, 8, 8)
    assert tt.auto_shape(7, 2) == (1, 7)
    for n in [1, 2, 12, 97, 768, 3072, 1000, 30000]:
        for d in range(1, 5):
            assert math.prod(tt.auto_shape(n, d)) == n
    assert tt.max_tt_ranks((2, 3, 4)) == (1, 2, 4, 1)
    assert tt.normalize_tt_rank(4, 3) == (1, 4, 4, 1)
    assert tt.normalize_tt_rank([2, 3], 3) == (1, 2, 3, 1)
    assert tt.normalize_tt_rank((1, 2, 3, 1), 3) == (1, 2, 3, 1)
    with pytest.raises(tt.ShapeError, match=">= 1"):
        tt.normalize_tt_rank(0, 3)
    with pytest.raises(tt.ShapeError, match=">= 1, got -2"):
        tt.normalize_tt_rank(-2, 1)
    with pytest.raises(tt.ShapeError, match="boundary ranks must be 1"):
        tt.normalize_tt_rank((2, 2, 2, 1), 3)
    with pytest.raises(tt.ShapeError, match="got 3 values"):
        tt.normalize_tt_rank((2, 2, 2), 3)
    # a rank below 1 inside a sequence (inner or full form), not only a single int
    with pytest.raises(tt.ShapeError, match=r"tt_rank values must be >= 1, got \(1, 2, 0, 1\)"):
        tt.normalize_tt_rank([2, 0], 3)
    with pytest.raises(tt.ShapeError, match=r"values must be >= 1, got \(1, -1, 1\)"):
        tt.normalize_tt_rank((1, -1, 1), 2)
    with pytest.raises(TypeError):
        tt.normalize_tt_rank(True, 3)
    with pytest.raises(ValueError, match="positive int"):
        tt.auto_shape(0, 2)


def test_numpy_and_torch_integers_are_ints_bools_strings_and_fractions_are_not():
    np = pytest.importorskip("numpy")
    for r in (np.int64(3), np.int32(3), np.array(3), torch.tensor(3)):
        assert tt.normalize_tt_rank(r, 3) == (1, 3, 3, 1)
    for rs in (np.array([2, 3]), torch.tensor([2, 3]), [np.int64(2), 3]):
        assert tt.normalize_tt_rank(rs, 3) == (1, 2, 3, 1)
    # whole, as t3f casts
    assert tt.normalize_tt_rank(2.0, 3) == tt.normalize_tt_rank([2.0, 2], 3) == (1, 2, 2, 1)
    for bad in (True, 2.5, "3", "23", b"3", None, [2.5, 3], ["2", 3], [True, 3]):
        with pytest.raises(TypeError):
            tt.normalize_tt_rank(bad, 3)
    assert tt.auto_shape(np.int64(784), np.int32(4)) == (4, 4, 7, 7)
    layer = tt.nn.TTLinear(np.int64(64), np.int32(32), tt_rank=np.int64(3))
    assert (layer.in_features, layer.out_features, layer.tt_ranks) == (64, 32, (1, 3, 1))
    assert type(layer.in_features) is int
    w = torch.randn(64, 64, dtype=torch.float64)
    assert tt.to_tt_matrix(w, [[8, 8], [8, 8]], max_tt_rank=np.int64(4)).tt_ranks == (1, 4, 1)
    loose = tt.to_tt_matrix(w, [[8, 8], [8, 8]], max_tt_rank=None, epsilon=np.float32(0.5))
    assert loose.tt_ranks == tt.to_tt_matrix(w, [[8, 8], [8, 8]], max_tt_rank=None, epsilon=0.5).tt_ranks
    assert tt.random_matrix_batch([[4, 4], [4, 4]], tt_rank=2, batch_size=np.int64(3)).batch_size == 3
    _, report = tt.compress(torch.nn.Sequential(torch.nn.Linear(64, 64)), max_tt_rank=np.int64(4))
    assert report.layers[0].tt_ranks == (1, 4, 1)


def test_one_element_rank_tensor_is_a_sequence_like_a_list():
    np = pytest.importorskip("numpy")
    # [5], np.array([5]) and torch.tensor([5]) are one rank value, not the int 5: all three are refused for
    # d = 3 (2 inner or 4 full ranks needed) and accepted for d = 2.
    for rs in ([5], np.array([5]), torch.tensor([5])):
        with pytest.raises(tt.ShapeError, match=r"got 1 values \(5,\)"):
            tt.normalize_tt_rank(rs, 3)
        assert tt.normalize_tt_rank(rs, 2) == (1, 5, 1)
    with pytest.raises(TypeError):
        tt.normalize_tt_rank(torch.tensor(True), 3)
    with pytest.raises(TypeError):
        tt.normalize_tt_rank(torch.tensor([True, True]), 3)


def test_base_class_and_subclasses_print():
    """repr() of the public base class (and of a subclass without __str__) must not recurse."""
    x = tt.TensorTrainBase([torch.ones(1, 2, 1)])
    assert repr(x) == str(x) == "A Tensor Train of shape (2,), TT-ranks: (1, 1)"  # t3f's (2,) for one mode

    class MyTT(tt.TensorTrainBase):
        pass

    assert str(MyTT([torch.ones(1, 2, 1)])) == "A Tensor Train of shape (2,), TT-ranks: (1, 1)"


def test_torch_functions_given_a_tt_object_say_what_to_do(gen):
    """Torch functions other than matmul raise a TypeError naming the function and the fix (a TT layer's
    .weight read outside the layer's forward is the usual cause), instead of torch's bare "Multiple dispatch
    failed"; matmul goes to tt.matmul and operators still fall back to the TT object's reflected methods."""
    w = random_tt(((2, 3), (2, 2)), (1, 2, 1), gen=gen)
    y = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    fix = (
        r"TT object \(e.g. the .weight of a TTLinear or TTEmbedding layer\).*called as modules.*tt.full\(w\)"
    )
    with pytest.raises(TypeError, match=f"torch function 'linear' got a TensorTrain, a {fix}"):
        torch.nn.functional.linear(x, w)
    with pytest.raises(TypeError, match=f"'embedding' got a TensorTrain, a {fix}"):
        torch.nn.functional.embedding(torch.tensor([1]), w)
    batch = random_tt(((2, 3), (2, 2)), (1, 2, 1), gen=gen, batch_size=2)
    with pytest.raises(TypeError, match="got a TensorTrainBatch, a TT object"):
        torch.cat([y, batch])  # type: ignore[list-item]
    full = tt.full(w)
    for product in (y @ w, torch.matmul(y, w), y.matmul(w)):
        torch.testing.assert_close(product, y @ full)
    # by keyword too (they got the message above: 'called as modules'), in torch's operand order
    for product in (torch.matmul(input=y, other=w), torch.matmul(other=w, input=y), y.matmul(other=w)):
        torch.testing.assert_close(product, y @ full)
    torch.testing.assert_close(torch.matmul(input=w, other=x.T), full @ x.T)
    with pytest.raises(TypeError, match=r"out=\) with a TT object.*out.copy_\(torch.matmul\(a, b\)\)"):
        torch.matmul(y, w, out=torch.empty(5, 4, dtype=torch.float64))
    torch.testing.assert_close(torch.matmul(y, w, out=None), y @ full)  # (torch's default)
    with pytest.raises(TypeError, match="add: first operand is a Tensor"):  # tt.add's own message
        y + w  # noqa: B018
    assert isinstance(torch.tensor(2.0, dtype=torch.float64) * w, tt.TensorTrain)
    assert (y == w) is False


def test_numpy_operands_and_sequences(gen):
    """NumPy scalars on the left scale a batch (they treated it as a sequence: an object array of TTs); arrays
    and iteration of a TensorTrain get clear errors; any iterable of cores (a ParameterList) builds a TT."""
    np = pytest.importorskip("numpy")
    b = random_tt((3, 4), (1, 2, 1), gen=gen, batch_size=4)
    for scale in (np.float64(2.0), np.int64(2), np.array(2.0)):
        scaled = scale * b
        assert isinstance(scaled, tt.TensorTrainBatch)
        assert_close(tt.full(scaled), 2 * tt.full(b))
    a = b[0]
    with pytest.raises(TypeError, match="got ndarray"):
        np.array([1.0, 2.0]) * a
    with pytest.raises(TypeError, match="is not an array: tt.full"):
        np.asarray(a)
    with pytest.raises(TypeError, match="a TensorTrain is not a sequence"):
        list(a)
    assert len(list(b)) == 4  # a batch iterates over its elements
    params = tt.tt_parameters(a)
    assert tt.TensorTrain(params).is_variable()
    assert tt.TensorTrain(c for c in a.tt_cores).tt_ranks == a.tt_ranks


def test_cores_must_be_dense_and_wide_enough():
    with pytest.raises(
        TypeError, match="must be dense \\(strided\\) tensors, core 0 has layout torch.sparse_coo"
    ):
        tt.TensorTrain([torch.randn(1, 3, 2).to_sparse(), torch.randn(2, 3, 1).to_sparse()])
    with pytest.raises(TypeError, match="16 bits or more"):
        tt.TensorTrain(
            [torch.randn(1, 3, 2).to(torch.float8_e4m3fn), torch.randn(2, 3, 1).to(torch.float8_e4m3fn)]
        )


def test_detached_and_indexed_tangent_vectors_keep_their_point(gen):
    x = random_tt((3, 4), (1, 2, 1), gen=gen)
    p = tt.project(torch.randn(5, 3, 4, generator=gen, dtype=torch.float64), x)
    for q in (p.detach(), p.clone(), p[0], p[1:3], p.to(torch.float64)):
        assert q.projection_on is x
    # the same elements through a tuple or an ellipsis (they dropped the point)
    for q in (p[(0,)], p[0, ...], p[1:3, ...], p[...], p[:, :, :], p[..., :], p[[0, 2], :]):
        assert q.projection_on is x
    assert getattr(p[:, 1:], "projection_on", None) is None  # a mode cut: not a tangent vector there
    assert getattr(p.to(torch.float32), "projection_on", None) is None  # another dtype: not the same point
    assert getattr(p * 2.0, "projection_on", None) is None  # scaling changes the delta layout
    assert_close(
        tt.pairwise_flat_inner_projected(p.detach(), p),
        tt.full(p).reshape(5, -1) @ tt.full(p).reshape(5, -1).T,
    )


def _core_lists():
    """Valid and invalid core lists of every kind the constructors see (batch axis added by the caller)."""
    f = torch.float32
    ok3 = [torch.ones(1, 2, 3), torch.ones(3, 4, 1)]
    ok4 = [torch.ones(1, 2, 2, 3), torch.ones(3, 2, 2, 1)]
    yield ok3
    yield ok4
    yield [torch.ones(1, 5, 1, dtype=torch.complex128)]
    yield [torch.ones(1, 5, 1, dtype=torch.bfloat16), torch.ones(1, 2, 1, dtype=torch.bfloat16)]
    yield []
    yield [torch.ones(2, 2, 3), torch.ones(3, 4, 1)]  # r_0 != 1
    yield [torch.ones(1, 2, 3), torch.ones(3, 4, 2)]  # r_d != 1
    yield [torch.ones(1, 2, 3), torch.ones(2, 4, 1)]  # ranks do not chain
    yield [torch.ones(1, 2, 3), torch.ones(3, 4, 2, 1)]  # mixed dims
    yield [torch.ones(1, 0, 1)]  # empty mode
    yield [torch.ones(1, 2, 1, dtype=torch.int64)]
    with warnings.catch_warnings():  # ("ComplexHalf support is experimental")
        warnings.simplefilter("ignore", UserWarning)
        yield [torch.ones(1, 2, 1, dtype=torch.complex32)]
    yield [torch.ones(1, 2, 1, dtype=torch.float8_e4m3fn)]
    yield [torch.ones(1, 2, 3, dtype=f), torch.ones(3, 4, 1, dtype=torch.float64)]
    yield [torch.ones(1, 2, 3, device="meta"), torch.ones(3, 4, 1)]
    yield [torch.ones(1, 2, 3).to_sparse(), torch.ones(3, 4, 1)]
    yield [torch.ones(1, 2, 3), [[1.0]]]
    yield [torch.ones(1, 2)]


@pytest.mark.parametrize("cls", [tt.TensorTrain, tt.TensorTrainBatch])
def test_the_constructors_fast_check_accepts_only_what_the_full_checks_accept(cls):
    """TensorTrain(cores) decides the common case in one pass (_plainly_valid) and leaves everything else to
    _validate: the fast test may never accept what _validate refuses."""
    for cores in _core_lists():
        if cls is tt.TensorTrainBatch:
            cores = [torch.stack([c, c]) if isinstance(c, torch.Tensor) else c for c in cores]
        obj = cls.__new__(cls)
        try:
            obj._validate(tuple(cores))
            valid = True
        except (TypeError, ValueError):
            valid = False
        if obj._plainly_valid(tuple(cores)):
            assert valid, [getattr(c, "shape", c) for c in cores]
        if valid:
            cls(cores)
        else:
            with pytest.raises((TypeError, ValueError)):
                cls(cores)


# is_variable is t3f's "every core is a Parameter": one Parameter among plain cores
# is not
def test_is_variable_needs_every_core_to_be_a_parameter(gen):
    a = random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen)
    mixed = tt.TensorTrain([torch.nn.Parameter(a.tt_cores[0].clone()), *a.tt_cores[1:]])
    assert not mixed.is_variable()
    assert str(mixed) == "A Tensor Train of shape (2, 3, 4), TT-ranks: (1, 2, 2, 1)"
    every = tt.TensorTrain([torch.nn.Parameter(c.clone()) for c in a.tt_cores])
    assert every.is_variable()


# a batch of TT-matrix parameters prints as "TT-matrix variables", as t3f's
def test_str_of_a_batch_of_tt_matrix_variables(gen):
    b = random_tt(((2, 3), (4, 5)), (1, 2, 1), gen=gen, batch_size=3)
    params = tt.TensorTrainBatch([torch.nn.Parameter(c.clone()) for c in b.tt_cores])
    assert str(params) == (
        "A 3 element batch of TT-matrix variables of size 6 x 20, underlying tensor shape: (2, 3) x (4, 5), "
        "TT-ranks: (1, 2, 1)"
    )
    assert str(b).startswith("A 3 element batch of TT-matrices of size 6 x 20")


# reflected operators name the operand the user wrote first: `1.0 - a` has the float
# first
def test_reflected_operators_name_the_left_operand(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen)
    with pytest.raises(TypeError, match="first operand is a float"):
        1.0 - a  # noqa: B018
    m = random_tt(((2, 3), (2, 2)), (1, 2, 1), gen=gen)
    with pytest.raises(TypeError, match="first operand must be"):
        [[1.0] * 6] @ m  # noqa: B018


# prime_factors with multiplicity, squares of primes and a last prime factor of 2
# included
@pytest.mark.parametrize(
    ("n", "factors"),
    [
        (1, []),
        (2, [2]),
        (4, [2, 2]),
        (9, [3, 3]),
        (12, [2, 2, 3]),
        (25, [5, 5]),
        (49, [7, 7]),
        (97, [97]),
        (360, [2, 2, 2, 3, 3, 5]),
    ],
)
def test_prime_factors_of_squares_and_primes(n, factors):
    assert tt.prime_factors(n) == factors


# max_padding is the largest padding accepted: a product of exactly (1 + max_padding)
# n is kept
def test_padded_shape_accepts_padding_of_exactly_max_padding():
    assert tt.padded_shape(5, 3) == (2, 2, 2)  # 8 = 1.6 * 5
    assert tt.padded_shape(5, 3, max_padding=0.6) == (2, 2, 2)
    assert tt.padded_shape(5, 3, max_padding=0.59) == (1, 1, 5)


# full ranks must start and end with 1: a last rank other than 1 is refused too
def test_normalize_tt_rank_refuses_full_ranks_not_ending_in_one():
    with pytest.raises(tt.ShapeError, match="boundary ranks must be 1"):
        tt.normalize_tt_rank([1, 2, 2, 3], 3)
    with pytest.raises(tt.ShapeError, match="boundary ranks must be 1"):
        tt.normalize_tt_rank([2, 2, 2, 1], 3)
    assert tt.normalize_tt_rank([1, 2, 3, 1], 3) == (1, 2, 3, 1)


def test_cuda_refuses_devices_of_other_types():
    """``.cuda("meta")`` moved the TT to meta where ``torch.Tensor.cuda`` raises."""
    x = tt.random_tensor((2, 3), tt_rank=2)
    for dev in ("meta", torch.device("cpu"), "cpu"):
        with pytest.raises(ValueError, match="expected a CUDA device, got"):
            x.cuda(dev)


def test_requires_grad_false_with_a_computed_core_changes_no_core(gen):
    """torch refuses requires_grad_(False) on a non-leaf core by core: the cores before it were already
    changed, a TT half with gradients and half without."""
    leaf = torch.randn(1, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    computed = torch.randn(2, 4, 1, generator=gen, dtype=torch.float64, requires_grad=True) * 2.0
    a = tt.TensorTrain([leaf, computed])
    with pytest.raises(RuntimeError, match=r"core 1 was computed by autograd.*\.detach\(\)"):
        a.requires_grad_(False)
    assert leaf.requires_grad and computed.requires_grad
    b = tt.TensorTrain([leaf, computed.detach()])
    assert b.requires_grad_(False) is b and not any(c.requires_grad for c in b.tt_cores)
