"""tensortrain.keras.KerasDense: t3f's Keras tutorial (tensor_nets) on Keras 3 with the torch backend."""

from __future__ import annotations

import builtins
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given

from strategies import matrix_specs, random_cores, seeds

# Keras picks its backend once, at first import: choose torch before that, or skip if someone else chose.
if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "torch"
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip(
        f"Keras was already imported with the {keras.backend.backend()!r} backend", allow_module_level=True
    )

import tensortrain as tt  # noqa: E402
from conftest import TOL, assert_close  # noqa: E402
from tensortrain.keras import KerasDense  # noqa: E402

# Keras 3.15's Variable.numpy() (used by get_weights) calls np.array(variable) without a copy keyword,
# which NumPy 2 flags; that is Keras' own warning, not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

IN_DIMS, OUT_DIMS = [7, 4, 7, 4], [5, 5, 5, 5]  # the tutorial's 784 -> 625 layer


def _mnist_root() -> Path:
    env = os.environ.get("TENSORTRAIN_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture(scope="module")
def mnist():
    """4,000 training and 1,000 test images, scaled as in the tutorial (x / 127.5 - 1), one-hot labels."""
    root = _mnist_root()
    if not root.is_dir():
        pytest.skip(f"MNIST IDX files not found in {root} (set TENSORTRAIN_DATA)")
    data = tt.datasets.load_mnist(root, download=False)

    def part(images: torch.Tensor, labels: torch.Tensor, n: int):
        x = images[:n].numpy().astype("float32") / 127.5 - 1.0
        return x, keras.utils.to_categorical(labels[:n].numpy(), 10)

    return part(data.train_images, data.train_labels, 4000), part(data.test_images, data.test_labels, 1000)


def _tt_model(tt_rank: int, **layer_kw) -> keras.Sequential:
    # The tutorial's model; keras.Input replaces Flatten(input_shape=...), which Keras 3 deprecates.
    return keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            KerasDense(IN_DIMS, OUT_DIMS, tt_rank=tt_rank, activation="relu", **layer_kw),
            keras.layers.Dense(10),
            keras.layers.Activation("softmax"),
        ]
    )


def _compile(model: keras.Model, lr: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )


def _expected_params(in_dims, out_dims, ranks, bias=True) -> int:
    cores = sum(ranks[k] * in_dims[k] * out_dims[k] * ranks[k + 1] for k in range(len(in_dims)))
    return cores + (math.prod(out_dims) if bias else 0)


# ------------------------------------------------------------------------------------ the tutorial's story
def test_tt_net_from_scratch_learns(mnist):
    (x, y), (x_test, y_test) = mnist
    keras.utils.set_random_seed(0)
    model = _tt_model(tt_rank=4, bias_initializer=1e-3)
    _compile(model, lr=1e-2)
    before = [w.copy() for w in model.layers[1].get_weights()]
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    after = model.layers[1].get_weights()
    # fit trains every core and the bias (t3f's layer under Keras 3 trains none of them).
    assert len(model.layers[1].trainable_weights) == len(IN_DIMS) + 1
    assert all(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    assert accuracy > 0.7, f"chance is 0.1; one epoch on 4,000 images gave {accuracy:.3f}"


@pytest.mark.parametrize("tt_rank", [4, 16])
def test_summary_counts_tt_parameters(tt_rank):
    model = _tt_model(tt_rank=tt_rank)
    layer = model.layers[1]
    expected = _expected_params(IN_DIMS, OUT_DIMS, (1, tt_rank, tt_rank, tt_rank, 1))
    assert expected == {4: 1725, 16: 15585}[tt_rank]  # the t3f tutorial's numbers
    assert layer.count_params() == expected
    assert model.count_params() == expected + 625 * 10 + 10
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kw: lines.append(line))
    assert f"{expected:,}" in "\n".join(lines)


def test_t3f_model_code_runs_unchanged():
    # t3f's tutorial builds the model with Flatten(input_shape=...): Keras 3 warns but builds it.
    model = keras.models.Sequential()
    with pytest.warns(UserWarning, match="input_shape"):
        model.add(keras.layers.Flatten(input_shape=(28, 28)))
    tt_layer = KerasDense(
        input_dims=[7, 4, 7, 4], output_dims=[5, 5, 5, 5], tt_rank=4, activation="relu", bias_initializer=1e-3
    )
    model.add(tt_layer)
    model.add(keras.layers.Dense(10))
    model.add(keras.layers.Activation("softmax"))
    assert tt_layer.count_params() == _expected_params(IN_DIMS, OUT_DIMS, (1, 4, 4, 4, 1))
    assert model.output_shape == (None, 10)


def test_compress_set_weights_evaluate_finetune(mnist):
    (x, y), (x_test, y_test) = mnist
    keras.utils.set_random_seed(1)
    dense = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(625, activation="relu"),
            keras.layers.Dense(10),
            keras.layers.Activation("softmax"),
        ]
    )
    _compile(dense, lr=1e-3)
    dense.fit(x, y, batch_size=64, epochs=1, verbose=0)

    # The tutorial: TT-SVD of the first kernel, then set_weights(cores + the other parameters).
    W = torch.as_tensor(dense.get_weights()[0])
    Wtt = tt.to_tt_matrix(W, shape=[IN_DIMS, OUT_DIMS], max_tt_rank=16)
    other_params = dense.get_weights()[1:]
    model = _tt_model(tt_rank=16)
    _compile(model, lr=1e-3)
    model.set_weights(list(Wtt.tt_cores) + other_params)
    assert model.count_params() == 21845  # the tutorial's compressed model

    # The TT model now computes the dense model with W replaced by its TT approximation.
    surrogate = keras.models.clone_model(dense)
    surrogate.set_weights([tt.full(Wtt).numpy(), *other_params])
    assert_close(
        torch.as_tensor(model.predict(x_test[:200], verbose=0)),
        torch.as_tensor(surrogate.predict(x_test[:200], verbose=0)),
        rtol=1e-4,
        atol=1e-5,
    )
    _, compressed_accuracy = model.evaluate(x_test, y_test, verbose=0)
    model.fit(x[:2000], y[:2000], batch_size=64, epochs=1, verbose=0)  # a short fine-tune
    _, finetuned_accuracy = model.evaluate(x_test, y_test, verbose=0)
    assert finetuned_accuracy > 0.6, (compressed_accuracy, finetuned_accuracy)


def test_save_and_load_model_round_trip(tmp_path, gen):
    model = _tt_model(tt_rank=3, bias_initializer=0.5)
    x = torch.rand(8, 28, 28, generator=gen)
    path = tmp_path / "tt_model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[1], KerasDense)
    assert loaded.layers[1].get_config() == model.layers[1].get_config()
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert_close(loaded(x), model(x), **TOL[torch.float32])


# ---------------------------------------------------------------------------------- the layer vs the core
@given(spec=matrix_specs(max_d=3, max_mode=4, max_rank=3), seed=seeds)
def test_output_equals_tt_matmul_and_dense(spec, seed):
    (in_dims, out_dims), ranks = spec
    gen = torch.Generator().manual_seed(seed)
    layer = KerasDense(list(in_dims), list(out_dims), tt_rank=ranks, dtype="float64")
    layer.build((None, math.prod(in_dims)))
    cores = random_cores((in_dims, out_dims), layer.tt_ranks, gen=gen)
    bias = torch.randn(math.prod(out_dims), generator=gen, dtype=torch.float64)
    layer.set_weights([*cores, bias])
    W = tt.TensorTrain(cores)
    x = torch.randn(2, 3, math.prod(in_dims), generator=gen, dtype=torch.float64)  # N-D input (t3f #223)
    y = layer(x)
    assert y.dtype == torch.float64 and y.shape == (2, 3, math.prod(out_dims))
    assert_close(y, tt.matmul(x, W) + bias)
    assert_close(y, x @ tt.full(W) + bias)  # the dense oracle
    assert_close(tt.full(layer.matrix), tt.full(W))


def test_gradients_reach_the_cores_as_through_the_dense_kernel(gen):
    layer = KerasDense([2, 3, 2], [3, 2, 2], tt_rank=3, dtype="float64")
    layer.build((None, 12))
    x = torch.randn(4, 12, generator=gen, dtype=torch.float64)
    target = torch.randn(4, 12, generator=gen, dtype=torch.float64)
    ((layer(x) - target) ** 2).sum().backward()
    # The oracle: the same loss through the dense kernel built from copies of the cores.
    cores = [v.value.detach().clone().requires_grad_() for v in layer.kernel_cores]
    bias = layer.bias.value.detach().clone().requires_grad_()
    ((x @ tt.full(tt.TensorTrain(cores)) + bias - target) ** 2).sum().backward()
    for v, c in zip(layer.kernel_cores, cores, strict=True):
        assert_close(v.value.grad, c.grad)
    assert_close(layer.bias.value.grad, bias.grad)


def test_float32_layer_and_activation(gen):
    layer = KerasDense([2, 3], [4, 2], tt_rank=2, activation="tanh", use_bias=False)
    x = torch.randn(5, 6, generator=gen)
    y = layer(x)
    assert layer.bias is None and len(layer.get_weights()) == 2
    assert y.dtype == torch.float32
    assert_close(y, torch.tanh(x @ tt.full(layer.matrix)))


def test_core_layout_is_t3f_input_by_output():
    layer = KerasDense([2, 3, 4], [5, 6, 7], tt_rank=2)
    layer.build((None, 24))
    shapes = [tuple(w.shape) for w in layer.get_weights()]
    assert shapes == [(1, 2, 5, 2), (2, 3, 6, 2), (2, 4, 7, 1), (210,)]
    assert tuple(layer.matrix.shape) == (24, 210)
    assert layer.count_params() == _expected_params([2, 3, 4], [5, 6, 7], (1, 2, 2, 1))


def test_ranks_clip_like_to_tt_matrix(gen):
    # A rank above the largest useful one would make to_tt_matrix's cores (clipped) not fit (t3f #218).
    layer = KerasDense([2, 3], [2, 2], tt_rank=50)
    layer.build((None, 6))
    assert layer.tt_ranks == tt.max_tt_ranks([4, 6]) == (1, 4, 1)
    assert layer.get_config()["tt_rank"] == [1, 50, 1]  # the config keeps the argument, not the clipped ranks
    W = torch.randn(6, 4, generator=gen)
    Wtt = tt.to_tt_matrix(W, shape=[[2, 3], [2, 2]], max_tt_rank=50)
    layer.set_weights([*Wtt.tt_cores, np.zeros(4, "float32")])
    assert_close(tt.full(layer.matrix), W)


@pytest.mark.parametrize(
    ("dims", "ranks"),
    [(([2, 2, 4], [2, 2, 4]), (1, 1, 8, 1)), (([7, 4, 7, 4], [5, 5, 5, 5]), (1, 2, 50, 16, 1))],
)
def test_uneven_ranks_fit_to_tt_matrix_cores(dims, ranks, gen):
    """The layer clipped each rank on its own: (1, 1, 8, 1) where TT-SVD gives (1, 1, 4, 1) (core 1 has 4 rows),
    and the tutorial's set_weights of to_tt_matrix's cores failed on the shapes."""
    rows, cols = dims
    layer = KerasDense(rows, cols, tt_rank=ranks)
    layer.build((None, math.prod(rows)))
    W = torch.randn(math.prod(rows), math.prod(cols), generator=gen)
    Wtt = tt.to_tt_matrix(W, shape=[rows, cols], max_tt_rank=ranks)
    assert layer.tt_ranks == Wtt.tt_ranks
    layer.set_weights([*Wtt.tt_cores, np.zeros(math.prod(cols), "float32")])
    assert_close(tt.full(layer.matrix), tt.full(Wtt))


@pytest.mark.parametrize(
    ("scheme", "variance"),
    [("glorot", lambda m, n: 2 / (m + n)), ("he", lambda m, n: 2 / m), ("lecun", lambda m, n: 1 / m)],
)
def test_kernel_initializer_variance(scheme, variance):
    # The full kernel's entries have the dense scheme's variance (averaged over independent layers).
    torch.manual_seed(0)
    in_dims, out_dims = [4, 4, 4], [2, 4, 8]
    squares = []
    for _ in range(40):
        layer = KerasDense(in_dims, out_dims, tt_rank=3, kernel_initializer=scheme)
        layer.build((None, 64))
        squares.append(tt.full(layer.matrix).detach().pow(2).mean())
    target = variance(64, 64)
    assert torch.stack(squares).mean().item() == pytest.approx(target, rel=0.2)


def test_bias_initializer_number_and_keras_initializer():
    layer = KerasDense([2, 2], [2, 2], bias_initializer=0.25)
    layer.build((None, 4))
    np.testing.assert_array_equal(layer.get_weights()[-1], np.full(4, 0.25, "float32"))
    layer = KerasDense([2, 2], [2, 2], bias_initializer="zeros")
    layer.build((None, 4))
    np.testing.assert_array_equal(layer.get_weights()[-1], np.zeros(4, "float32"))


def test_bias_initializer_numpy_and_torch_scalars_are_numbers():
    """t3f-era code passes NumPy scalars (x.mean() of a float32 array): Keras would read a 0-dim array as a
    direct tensor of shape () and fail at build."""
    for value in (np.float32(0.25), np.int64(2), np.array(0.25), torch.tensor(0.25)):
        layer = KerasDense([2, 2], [2, 2], bias_initializer=value)
        layer.build((None, 4))
        np.testing.assert_allclose(layer.get_weights()[-1], np.full(4, float(value), "float32"))
        assert json.loads(json.dumps(layer.get_config()))["bias_initializer"] == float(value)


def test_bias_initializer_zero_and_bools():
    """0 is a number (t3f code passes bias_initializer=0), not "no initializer"; a bool is neither."""
    for zero in (0, 0.0, np.float32(0)):
        layer = KerasDense([2, 2], [2, 2], bias_initializer=zero)
        layer.build((None, 4))
        np.testing.assert_array_equal(layer.get_weights()[-1], np.zeros(4, "float32"))
    with pytest.raises(ValueError, match="Could not interpret initializer identifier: True"):
        KerasDense([2, 2], [2, 2], bias_initializer=True).build((None, 4))


def test_a_keras_initializer_object_as_bias_initializer_serializes():
    layer = KerasDense([2, 2], [2, 2], bias_initializer=keras.initializers.Constant(0.3))
    config = json.loads(json.dumps(layer.get_config()))
    clone = KerasDense.from_config(config)
    clone.build((None, 4))
    np.testing.assert_allclose(clone.get_weights()[-1], np.full(4, 0.3, "float32"))


def test_a_float64_layer_draws_its_cores_in_float64():
    torch.manual_seed(0)
    layer = KerasDense([2, 3], [2, 2], dtype="float64")
    layer.build((None, 6))
    cores = [w.value.detach() for w in layer.kernel_cores]
    assert all(c.dtype == torch.float64 for c in cores)
    assert not all(torch.equal(c, c.float().double()) for c in cores)  # (not float32 draws widened)
    y = layer(np.arange(12).reshape(2, 6).astype("int32"))  # integer inputs take the layer's dtype
    assert y.dtype == torch.float64


def test_weights_have_distinct_paths_and_build_takes_an_unknown_feature_size():
    layer = KerasDense([2, 3], [2, 2], name="tt")
    layer.build((None, None))  # (as a Functional model with an unknown last dim builds it)
    assert [tuple(w.shape) for w in layer.weights] == [(1, 2, 2, 2), (2, 3, 2, 1), (4,)]
    assert [w.path for w in layer.weights] == ["tt/core_0", "tt/core_1", "tt/bias"]


def test_integer_inputs_are_cast_as_keras_dense_casts_them(gen):
    x = np.random.default_rng(0).integers(0, 255, (4, 4)).astype("uint8")
    layer = KerasDense([2, 2], [2, 2])
    y = layer(x)
    assert y.dtype == torch.float32
    np.testing.assert_allclose(
        y.detach().numpy(), (torch.as_tensor(x).float() @ tt.full(layer.matrix) + layer.bias.value).detach().numpy(),
        rtol=1e-5, atol=1e-4,
    )  # fmt: skip


def test_masks_pass_through_and_inputs_take_the_layers_precision(tmp_path):
    """The layer dropped masks (pooling after it averaged padded steps: 0.045 off keras' Dense); with
    autocast=False a float64 input failed in tt.matmul where keras' Dense casts it; a complex input was let
    through to the same failure."""
    layer = KerasDense([2, 3], [2, 2])
    dense = keras.layers.Dense(4)
    tokens = np.array([[3, 5, 0, 0], [1, 2, 4, 0]])
    outs = []
    for head in (layer, dense):
        emb = keras.layers.Embedding(
            10,
            6,
            mask_zero=True,
            embeddings_initializer=keras.initializers.Constant(
                np.arange(60, dtype="float32").reshape(10, 6) / 60
            ),
        )
        model = keras.Sequential([keras.Input((4,)), emb, head, keras.layers.GlobalAveragePooling1D()])
        if head is dense:
            head.set_weights([tt.full(layer.matrix).detach().numpy(), layer.bias.value.detach().numpy()])
        outs.append(model(tokens).detach().numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    plain = KerasDense([2, 3], [2, 2], autocast=False)
    assert plain(torch.randn(4, 6, dtype=torch.float64)).dtype == torch.float32
    # under a mixed policy too: Keras still autocasts the variables inside __call__, and the product ran in
    # float16 / bfloat16 (output in that dtype, errors 3-4x Dense's); now in float32, as Dense's output, and
    # with the cores unrounded (Dense's kernel is rounded to half precision even so)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    for policy in ("mixed_float16", "mixed_bfloat16"):
        full = KerasDense([4, 4], [4, 4], tt_rank=4, dtype=policy, autocast=False)
        ref = keras.layers.Dense(16, dtype=policy, autocast=False)
        full.build((None, 16)), ref.build((None, 16))
        ref.set_weights([tt.full(full.matrix).detach().numpy(), full.bias.value.detach().numpy()])
        exact = x.double() @ tt.full(full.matrix).detach().double() + full.bias.value.detach().double()
        got, want = full(x), ref(x)
        assert got.dtype == want.dtype == torch.float32, policy
        err, ref_err = ((y.detach().double() - exact).abs().max() for y in (got, want))
        assert err <= 1e-5 < ref_err, (policy, err, ref_err)
    # and it survives save and load (Keras' own config drops autocast: Dense(autocast=False) loads back as True)
    path = str(tmp_path / "m.keras")
    keras.Sequential([keras.Input((16,)), full]).save(path)
    again = keras.models.load_model(path).layers[0]
    assert again.autocast is False
    torch.testing.assert_close(again(x), full(x))
    with pytest.raises(TypeError, match="complex inputs are not supported"):
        layer(torch.randn(4, 6, dtype=torch.complex64))


def test_a_default_layer_builds_with_the_add_weight_of_keras_3_0(monkeypatch):
    """Keras takes add_weight(autocast=...) from 3.2 on and pyproject admits 3.0: only a layer with
    autocast=False may pass it (passing it always broke every build there)."""
    real = keras.layers.Layer.add_weight

    def add_weight_3_0(self, *args, **kwargs):
        if "autocast" in kwargs:
            raise TypeError("add_weight() got an unexpected keyword argument 'autocast'")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "add_weight", add_weight_3_0)
    layer = KerasDense([2, 3], [2, 2])
    assert layer(torch.randn(4, 6)).shape == (4, 4)


def test_get_config_from_config_round_trip():
    layer = KerasDense(
        [3, 4], [2, 5], tt_rank=[1, 3, 1], activation="relu", bias_initializer="ones", name="tt"
    )
    config = layer.get_config()
    assert config["input_dims"] == [3, 4] and config["tt_rank"] == [1, 3, 1]
    clone = KerasDense.from_config(config)
    assert clone.get_config() == config
    clone.build((None, 12))
    assert [tuple(w.shape) for w in clone.get_weights()] == [(1, 3, 2, 3), (3, 4, 5, 1), (10,)]
    # the base layer's entries and every argument come back, also where they are not the defaults
    layer = KerasDense(
        [2, 3], [2, 2], kernel_initializer="he", use_bias=np.bool_(False), dtype="float64", name="head",
        trainable=False,
    )  # fmt: skip
    config = json.loads(json.dumps(layer.get_config()))
    assert config["use_bias"] is False and config["kernel_initializer"] == "he"
    clone = KerasDense.from_config(config)
    assert (clone.name, clone.dtype, clone.trainable) == ("head", "float64", False)
    assert (clone.kernel_initializer, clone.use_bias) == ("he", False)
    assert KerasDense([2, 2], [2, 2], use_bias=0).get_config()["use_bias"] is False


# ----------------------------------------------------------------------------------------------- errors
def test_bad_arguments_raise_clear_errors():
    with pytest.raises(tt.ShapeError, match=r"input_dims \(2, 3\) and output_dims \(4,\)"):
        KerasDense([2, 3], [4])
    with pytest.raises(ValueError, match=r"unknown kernel_initializer 'xavier'.*'glorot', 'he', 'lecun'"):
        KerasDense([2, 3], [4, 2], kernel_initializer="xavier")
    with pytest.raises(TypeError, match="input_dims must be a sequence of ints"):
        KerasDense(6, [4, 2])
    with pytest.raises(TypeError, match="input_dims must be a sequence of ints, got '23'"):
        KerasDense("23", [2, 2])
    with pytest.raises(TypeError, match="input_dims must be a 1-D sequence of ints, got a 0-D ndarray"):
        KerasDense(np.array(6), [6])
    with pytest.raises(tt.ShapeError, match=r"input_dims \(2,\) and output_dims \(4, 5\)"):
        KerasDense([2], [4, 5])
    with pytest.raises(tt.ShapeError, match=r"input_dims .*non-empty"):
        KerasDense([], [])
    with pytest.raises(tt.ShapeError, match=r"non-empty positive ints, got \(0, 3\)"):
        KerasDense([2, 3], [0, 3])
    with pytest.raises(tt.ShapeError, match="tt_rank"):
        KerasDense([2, 3], [4, 2], tt_rank=0)
    # Keras' other initializer forms: a dict failed with "unhashable type: 'dict'"
    for other in ({"class_name": "GlorotUniform", "config": {}}, keras.initializers.GlorotUniform(), None):
        with pytest.raises(ValueError, match=r"unknown kernel_initializer .*'glorot', 'he', 'lecun'"):
            KerasDense([2, 3], [4, 2], kernel_initializer=other)
    # an unbuilt layer called on a scalar failed with a bare IndexError in build
    with pytest.raises(tt.ShapeError, match=r"must have shape \(\.\.\., 6\) .* got a scalar"):
        KerasDense([2, 3], [4, 2])(np.float32(1.0))


def test_numpy_dims_as_t3f_code_passes_them():
    layer = KerasDense(np.array([7, 4]), np.array([5, 5]), tt_rank=np.int64(3))
    assert layer.input_dims == (7, 4) and layer.output_dims == (5, 5)
    assert all(type(n) is int for n in (*layer.input_dims, *layer.output_dims))  # JSON-able config
    assert KerasDense([np.int64(7), 4], [5, np.int32(5)]).input_dims == (7, 4)
    assert KerasDense.from_config(layer.get_config()).input_dims == (7, 4)
    with pytest.raises(TypeError, match=r"input_dims must contain ints, got \(np.float64\(7.0\)"):
        KerasDense(np.array([7.0, 4.0]), [5, 5])
    with pytest.raises(TypeError, match=r"output_dims must be a 1-D sequence of ints, got a 2-D ndarray"):
        KerasDense([7, 4], np.array([[5, 5]]))


def test_t3f_attribute_names_b_and_matrix():
    layer = KerasDense([2, 3], [4, 2], tt_rank=2)
    with pytest.raises(ValueError, match=r"KerasDense 'keras_dense.*' is not built yet.*call build"):
        _ = layer.matrix
    layer.build((None, 6))
    assert layer.b is layer.bias and tuple(layer.b.shape) == (8,)  # t3f's KerasDense names its bias b
    assert layer.matrix.raw_shape == ((2, 3), (4, 2))
    with pytest.raises(AttributeError):
        layer.b = None
    unbiased = KerasDense([2, 3], [4, 2], use_bias=False)
    unbiased.build((None, 6))
    assert unbiased.b is None


def test_wrong_input_size_raises_shape_error():
    with pytest.raises(
        tt.ShapeError, match=r"input has 100 features.*input_dims \(7, 4, 7, 4\) multiply to 784"
    ):
        keras.Sequential([keras.Input((100,)), KerasDense(IN_DIMS, OUT_DIMS)])
    # a built layer reused on a symbolic input of another width built a model with a (None, 625) output; the
    # error came at the first real call. Keras checks the layer's input_spec, as for keras.layers.Dense
    layer = KerasDense(IN_DIMS, OUT_DIMS)
    keras.Sequential([keras.Input((784,)), layer])
    with pytest.raises(ValueError, match=r"expected axis -1 of input shape to have value 784.*\(None, 100\)"):
        layer(keras.Input((100,)))
    assert tuple(layer(keras.Input((3, 784))).shape) == (None, 3, 625)
    # one sample without a batch axis, as before
    assert tuple(layer(np.zeros(784, "float32")).shape) == (625,)


def _run_module_source() -> None:
    """Execute tensortrain/keras.py afresh (under another module name), as a first import would."""
    import tensortrain.keras as module

    spec = importlib.util.spec_from_file_location("tensortrain._keras_probe", module.__file__)
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_keras_on_another_backend_raises_import_error(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ImportError, match=r"Keras runs on 'jax'.*KERAS_BACKEND=torch"):
        _run_module_source()


def test_keras_missing_or_its_backend_missing_raises_import_error(monkeypatch):
    real_import = builtins.__import__

    def failing_import(missing: str):
        def fake(name, *args, **kwargs):
            if name == "keras":
                raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)
            return real_import(name, *args, **kwargs)

        return fake

    monkeypatch.setattr(builtins, "__import__", failing_import("tensorflow"))
    with pytest.raises(ImportError, match=r"'tensorflow' is missing.*KERAS_BACKEND=torch"):
        _run_module_source()
    monkeypatch.setattr(builtins, "__import__", failing_import("keras"))
    with pytest.raises(ImportError, match=r'needs Keras 3: pip install "tensortrain\[keras\]"'):
        _run_module_source()


def test_import_on_numpy_backend_fails_in_a_fresh_interpreter():
    # End to end: Keras fixes its backend at its first import, so this needs a new process. Keras' numpy
    # backend needs scipy: without it Keras fails to import (the "backend missing" message), with it
    # Keras imports and our backend check fires. Either way: an ImportError naming the backend and the fix.
    result = subprocess.run(
        [sys.executable, "-c", "import tensortrain.keras"],
        env={**os.environ, "KERAS_BACKEND": "numpy"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "ImportError" in result.stderr, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("ImportError") and "KERAS_BACKEND=torch" in message, message
    assert "'numpy'" in message, message


def test_keras_config_round_trip_keeps_use_bias_false():
    # (test_keras.py, beside test_get_config_from_config_round_trip) a layer without a bias is rebuilt without one
    import sys

    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras was already imported with another backend")
    from tensortrain.keras import KerasDense

    layer = KerasDense([3, 4], [2, 5], tt_rank=2, use_bias=False)
    assert layer.get_config()["use_bias"] is False
    clone = KerasDense.from_config(layer.get_config())
    clone.build((None, 12))
    assert clone.use_bias is False and clone.bias is None
    assert len(clone.weights) == 2  # the two cores, no bias
