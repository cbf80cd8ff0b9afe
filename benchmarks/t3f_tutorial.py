"""The reference for ``tensortrain demo mnist``: t3f's own tensor_nets tutorial, one run per seed, in TensorFlow.

The issue's four stages with t3f 1.2.0 and Keras, exactly as the tutorial builds them: **a** a
``t3f.nn.KerasDense`` 784 -> 625 layer, dims (7, 4, 7, 4) -> (5, 5, 5, 5), rank 4, bias 1e-3, ReLU, Dense(10),
Adam 1e-2, 3 epochs; **b** dense 784-625-10, Adam 1e-3, 5 epochs; **c** b's kernel through
``t3f.to_tt_matrix(W, shape=[[7, 4, 7, 4], [5, 5, 5, 5]], max_tt_rank=16)`` loaded with ``set_weights``;
**d** c fine-tuned 2 epochs, Adam 1e-3. Batch 64, inputs ``x / 127.5 - 1``, softmax and
``categorical_crossentropy``; test accuracy after each stage (Keras' ``validation_data``, as the tutorial).
Seeds through ``keras.utils.set_random_seed`` (initializers and shuffling).

It does not import tensortrain or torch: it runs in a TensorFlow environment of its own. t3f needs two shims
on today's stack (``np.int``, removed in NumPy 1.24; Keras 2 through tf-keras, since under Keras 3 the layer's
cores are not tracked and never train):

    python3 -m venv tf && tf/bin/pip install tensorflow-cpu==2.21.0 t3f==1.2.0 \\
        && tf/bin/pip install --no-deps tf-keras==2.21.0
    tf/bin/python benchmarks/t3f_tutorial.py --data ../shared/data/mnist --seeds 0-19 --json out/t3f.json

(``--no-deps``: tf-keras depends on the full ``tensorflow`` wheel, which would replace ``tensorflow-cpu``.)
About 40 s per seed on 2 CPU threads.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import os
import statistics
import time
from pathlib import Path

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
TARGETS = {"a": 96.0, "b": 97.0, "d": 97.5}


def read_idx(root: Path, stem: str):  # type: ignore[no-untyped-def]
    """An IDX file (gzipped or not) as a NumPy array. (tensortrain.datasets has the checked reader; this script
    runs where neither tensortrain nor torch is installed.)"""
    import numpy as np

    path = root / (stem + ".gz")
    if path.exists():
        with gzip.open(path) as f:
            data = f.read()
    else:
        data = (root / stem).read_bytes()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def parse_seeds(text: str) -> list[int]:
    """``0-19`` or ``0,3,7`` as a list (the demo's ``--seeds`` syntax)."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    if not seeds:
        raise ValueError(f"--seeds {text!r} names no seed")
    return seeds


def run_seed(seed: int, data: dict, keras, t3f) -> dict:  # type: ignore[no-untyped-def,type-arg]
    x_train, y_train, x_test, y_test = data["x_train"], data["y_train"], data["x_test"], data["y_test"]

    def fit(model, lr: float, epochs: int) -> float:  # type: ignore[no-untyped-def]
        opt = keras.optimizers.Adam(learning_rate=lr)
        model.compile(optimizer=opt, loss="categorical_crossentropy", metrics=["accuracy"])
        hist = model.fit(
            x_train, y_train, epochs=epochs, batch_size=64, validation_data=(x_test, y_test), verbose=0
        )
        return 100.0 * hist.history["val_accuracy"][-1]

    def tt_net(rank: int, **kw):  # type: ignore[no-untyped-def]
        layer = t3f.nn.KerasDense(
            input_dims=[7, 4, 7, 4], output_dims=[5, 5, 5, 5], tt_rank=rank, activation="relu", **kw
        )
        return keras.Sequential(
            [keras.layers.Flatten(input_shape=(28, 28)), layer, keras.layers.Dense(10), keras.layers.Activation("softmax")]
        )  # fmt: skip

    keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    model = tt_net(4, bias_initializer=1e-3)
    params = {"a": model.count_params()}
    a = fit(model, 1e-2, 3)
    model = keras.Sequential(
        [keras.layers.Flatten(input_shape=(28, 28)), keras.layers.Dense(625, activation="relu"),
         keras.layers.Dense(10), keras.layers.Activation("softmax")]
    )  # fmt: skip
    params["b"] = model.count_params()
    b = fit(model, 1e-3, 5)
    w_tt = t3f.to_tt_matrix(model.trainable_weights[0], shape=[[7, 4, 7, 4], [5, 5, 5, 5]], max_tt_rank=16)
    rest = model.get_weights()[1:]
    model = tt_net(16)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="categorical_crossentropy",
                  metrics=["accuracy"])  # fmt: skip
    model.set_weights([c.numpy() for c in w_tt.tt_cores] + rest)
    params["c"] = params["d"] = model.count_params()
    c = 100.0 * model.evaluate(x_test, y_test, verbose=0)[1]
    d = fit(model, 1e-3, 2)
    return {
        "seed": seed,
        "a": a,
        "b": b,
        "c": c,
        "d": d,
        "params": params,
        "seconds": time.perf_counter() - t0,
    }


def summarize(runs: list[dict]) -> dict:  # type: ignore[type-arg]
    """Mean, sd, min, max per stage, and the runs meeting each target.

    Keras reports accuracy as a float32 fraction: 9,600 of 10,000 right is stored as 95.99999785..., so a run
    meets a target when its count of right test images does (accuracy x 100, rounded), not its float.
    """
    summary = {}
    for k in "abcd":
        v = [r[k] for r in runs]
        summary[k] = {
            "mean": statistics.mean(v),
            "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
            "min": min(v),
            "max": max(v),
            "meeting_target": (
                sum(round(x * 100) >= round(TARGETS[k] * 100) for x in v) if k in TARGETS else None
            ),
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder of the four MNIST IDX files (gzipped or not)")
    ap.add_argument("--seeds", default="0", help="e.g. 0-19 or 0,3,7")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the runs and their summary here")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np

    np.int = int  # type: ignore[attr-defined]  # t3f 1.2.0's initializers still use it
    import t3f
    import tensorflow as tf
    import tf_keras as keras

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    root = Path(args.data)
    raw = {k: read_idx(root, v) for k, v in FILES.items()}
    data = {
        "x_train": raw["train_images"] / 127.5 - 1.0,
        "y_train": keras.utils.to_categorical(raw["train_labels"], 10),
        "x_test": raw["test_images"] / 127.5 - 1.0,
        "y_test": keras.utils.to_categorical(raw["test_labels"], 10),
    }
    runs = []
    for seed in parse_seeds(args.seeds):
        row = run_seed(seed, data, keras, t3f)
        print(json.dumps(row), flush=True)
        runs.append(row)
    summary = summarize(runs)
    print(
        "\n| stage | mean ± sd | min | max | runs meeting the target |\n| --- | ---: | ---: | ---: | ---: |"
    )
    for k, s in summary.items():
        hits = s["meeting_target"]
        met = f"{hits} of {len(runs)} (>= {TARGETS[k]})" if hits is not None else "(reported)"
        print(f"| {k} | {s['mean']:.2f} ± {s['sd']:.2f} | {s['min']:.2f} | {s['max']:.2f} | {met} |")
    if args.json:
        out = {
            "versions": {
                "tensorflow": tf.__version__,
                "t3f": importlib.metadata.version("t3f"),  # (t3f has no __version__)
                "tf_keras": keras.__version__,
                "numpy": np.__version__,
            },
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "threads": args.threads,
            "runs": runs,
            "summary": summary,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
