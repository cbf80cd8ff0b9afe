"""Does the gauge of TT-SVD cores change how well they fine-tune? Stages b-d of the MNIST demo, on a validation split.

A TT-matrix has many core sets for one weight: any invertible matrices between neighbouring cores, or any
scalars whose product is 1, leave the weight unchanged. Optimizers do not: Adam steps every entry by about its
learning rate, so a core of large entries moves relatively less. ``TTLinear.from_linear`` keeps TT-SVD's gauge,
as t3f's ``to_tt_matrix`` does (cores left-orthonormal, the weight's norm in the last core). This script asks
whether another start fine-tunes better, without looking at the test set:

- train images 0-49,999 train (stage b: dense 784-625-10, Adam 1e-3, 5 epochs, batch 64, the demo's init);
- stage c: b's first layer through ``TTLinear.from_linear(max_tt_rank=RANK)``, then each gauge variant of the
  same cores (checked: the same weight to float32 round-off);
- stage d: 2 epochs of fine-tuning (Adam 1e-3, or ``--optimizer sgd``: momentum 0.9), every variant from the same
  model and with the same batches; accuracy on train images 50,000-59,999 (validation) and on the test set.

Variants: ``svd`` (TT-SVD's cores, the default), ``norm`` (equal core norms, ``tt.renormalize_tt_cores``),
``rms`` (equal root-mean-square entries: core k's norm proportional to the square root of its size, as a fresh
initializer's cores have).

    .venv/bin/python benchmarks/finetune_gauge.py --data ../shared/data/mnist --rank 16 --seeds 0-15 \\
        --json out/gauge-r16.json

About 30 s per seed and three variants on 2 threads.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import tensortrain as tt
from tensortrain.cli import _seed_list
from tensortrain.demo import IN_DIMS, OUT_DIMS, accuracy, dense_net
from tensortrain.nn import TTLinear

VARIANTS = ("svd", "norm", "rms")


def regauged(cores: list[torch.Tensor], variant: str) -> list[torch.Tensor]:
    """The same TT-matrix's cores with their norms redistributed (one scalar per core, product 1)."""
    if variant == "svd":
        return [c.clone() for c in cores]
    if variant == "norm":
        return list(tt.renormalize_tt_cores(tt.TensorTrain(cores), epsilon=0).tt_cores)
    if variant != "rms":
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    logs = [math.log(float(c.norm())) for c in cores]
    halves = [0.5 * math.log(c.numel()) for c in cores]
    # log target norm_k = s + halves_k, with sum over k equal to sum(logs): the weight stays the same
    s = (sum(logs) - sum(halves)) / len(cores)
    return [c * math.exp(s + h - lg) for c, h, lg in zip(cores, halves, logs, strict=True)]


def _percent(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return round(100 * accuracy(model, x, y), 2)


def _train(model: nn.Module, x, y, epochs: int, lr: float, seed: int, optimizer: str) -> None:
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-7)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def run_seed(data, seed: int, args) -> dict:
    """One seed: stage b, then stage d from each variant; accuracies in percent."""
    x_tr, y_tr, x_val, y_val, x_te, y_te = data
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    dense = dense_net()  # (Keras' Dense init, as the demo's)
    _train(dense, x_tr, y_tr, args.epochs_dense, 1e-3, seed * 1000 + 98, "adam")
    row: dict = {"seed": seed, "b_val": _percent(dense, x_val, y_val)}
    first = dense[1]
    assert isinstance(first, nn.Linear)
    svd = TTLinear.from_linear(first, max_tt_rank=args.rank, in_dims=IN_DIMS, out_dims=OUT_DIMS)
    cores = [c.detach() for c in svd.weight.tt_cores]
    for variant in args.variants:
        model = dense_net()
        model.load_state_dict(dense.state_dict())
        layer = TTLinear.from_linear(first, max_tt_rank=args.rank, in_dims=IN_DIMS, out_dims=OUT_DIMS)
        layer.load_tt_(tt.TensorTrain(regauged(cores, variant)))
        w, w0 = layer.dense_weight().detach(), svd.dense_weight().detach()
        # the same weight: only the gauge differs
        assert float((w - w0).norm() / w0.norm()) < 1e-5, variant
        model[1] = layer
        row["c_val"] = _percent(model, x_val, y_val)
        _train(model, x_tr, y_tr, args.epochs_finetune, args.lr, seed * 1000 + 100, args.optimizer)
        row[f"{variant}_val"] = _percent(model, x_val, y_val)
        row[f"{variant}_test"] = _percent(model, x_te, y_te)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def summarize(runs: list[dict], variants: list[str]) -> dict:
    """Mean and sd per variant, and each variant's paired difference to the first (mean, standard error)."""
    out = {}
    base = variants[0]
    for v in variants:
        entry = {}
        for split in ("val", "test"):
            vals = [r[f"{v}_{split}"] for r in runs]
            diffs = [r[f"{v}_{split}"] - r[f"{base}_{split}"] for r in runs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
            entry[split] = {"mean": statistics.mean(vals), "sd": sd}
            entry[f"{split}_minus_{base}"] = {"mean": statistics.mean(diffs), "se": se}
        entry["better_on_val"] = sum(r[f"{v}_val"] > r[f"{base}_val"] for r in runs)
        out[v] = entry
    return out


def _variants(text: str) -> list[str]:
    names = text.split(",")
    bad = [n for n in names if n not in VARIANTS]
    if bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"variants must be distinct names from {', '.join(VARIANTS)}, got {text!r}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="MNIST folder (default: load_mnist's search)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--seeds", type=_seed_list, default=[0], help="e.g. 0-15 or 0,3,7")
    p.add_argument("--variants", type=_variants, default=list(VARIANTS))
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning rate (default: 1e-3 Adam, 1e-2 SGD)")
    p.add_argument("--epochs-dense", type=int, default=5)
    p.add_argument("--epochs-finetune", type=int, default=2)
    p.add_argument("--train-subset", type=int, default=None, help="first N of the 50,000 training images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.rank < 1:
        p.error(f"--rank must be >= 1, got {args.rank}")
    if args.lr is None:
        args.lr = 1e-3 if args.optimizer == "adam" else 1e-2
    torch.set_num_threads(args.threads)
    m = tt.datasets.load_mnist(args.data, download=False)
    x = m.train_images.float() / 127.5 - 1
    n = 50000 if args.train_subset is None else min(args.train_subset, 50000)
    data = (
        x[:n],
        m.train_labels[:n],
        x[50000:],
        m.train_labels[50000:],
        m.test_images.float() / 127.5 - 1,
        m.test_labels,
    )
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(data, seed, args))
        print(json.dumps(runs[-1]), flush=True)
    summary = summarize(runs, args.variants)
    for v, e in summary.items():
        diff = e[f"val_minus_{args.variants[0]}"]
        print(
            f"{v:5s} val {e['val']['mean']:.2f} ± {e['val']['sd']:.2f}  test {e['test']['mean']:.2f} ± "
            f"{e['test']['sd']:.2f}  val - {args.variants[0]}: {diff['mean']:+.3f} (se {diff['se']:.3f}), "
            f"better in {e['better_on_val']} of {len(runs)}"
        )
    if args.json is not None:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        meta = {"torch": torch.__version__, "tensortrain": tt.__version__, "command": sys.argv}
        doc = {"config": config, "meta": meta, "runs": runs, "summary": summary}
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
