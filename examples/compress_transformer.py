"""Whole-model compression of a small trained transformer: train, ``tt.compress``, fine-tune, save, reload.

A character-level causal language model is trained on a corpus every Python installation has without a
download: the source text of a fixed list of standard-library modules (:data:`CORPUS_MODULES`, read with
``inspect.getsource``; 879,701 characters with Python 3.11). The first 90% of the text trains, the last 10% validates (split by
position); the vocabulary is the characters of the training part, plus an ``<unk>`` id for the others. The
exact numbers depend on the Python version (its standard library is the corpus) and, in their last digits, on
the CPU and the number of threads.

The model is built from standard modules only: ``nn.Embedding`` for the characters and for the positions,
an ``nn.TransformerEncoder`` (pre-norm layers, ``batch_first=True``) run with a causal mask, and an
``nn.Linear`` head. The steps, each printing what it did:

1. train the dense model with AdamW and report its validation loss, in nats and in bits per character,
   next to that of a unigram model (each character's frequency in the training text);
2. ``small, report = tt.compress(model, ratio=R)``: every exact ``nn.Linear`` / ``nn.Embedding`` becomes a
   ``TTLinear`` / ``TTEmbedding`` (TT-SVD of its trained weight), at the largest shared TT-rank cap that
   makes the selected layers R times smaller (``--max-tt-rank`` or ``--epsilon`` instead). The attention
   blocks stay dense: ``nn.MultiheadAttention`` keeps its input projection as a bare parameter, not a layer,
   and its ``out_proj`` is a subclass of ``nn.Linear`` whose weight the block reads directly, so ``compress``
   leaves it alone. ``print(report)`` shows every selected layer, both factors, of the selected layers (R or
   more) and of the whole model (less), and where the rest of the model's parameters are;
3. fine-tune the compressed model (the TT cores and everything else) with AdamW;
4. save its ``state_dict`` with ``torch.save`` and load it into a freshly built dense model turned TT the way
   README.md's "Deploy" section does it (``tt.compress(fresh, max_tt_rank=1, include=<the replaced names>)``,
   then ``load_state_dict``, which resizes the cores to the saved ranks): the same validation loss;
5. ``tt.decompress`` gives the dense equivalent of the fine-tuned model (same loss, dense size again);
6. a summary table: stage, parameters, validation loss, bits per character.

The validation loss is the mean cross-entropy over the validation text cut into consecutive windows of
``--context`` characters (each predicted from the window's earlier characters).

    OMP_NUM_THREADS=2 python examples/compress_transformer.py --seed 0
    python examples/compress_transformer.py --max-tt-rank 16 --finetune-steps 800
"""

from __future__ import annotations

import argparse
import glob
import importlib
import inspect
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

import tensortrain as tt

CORPUS_MODULES = (
    "argparse",
    "textwrap",
    "json.decoder",
    "json.encoder",
    "collections",
    "dataclasses",
    "functools",
    "pathlib",
    "difflib",
    "string",
    "random",
    "fractions",
    "calendar",
    "configparser",
    "csv",
    "shutil",
    "tempfile",
    "heapq",
    "statistics",
    "pickle",
    "ast",
)
"""Pure-Python standard-library modules whose source text is the corpus, in this order."""

UNK = "<unk>"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train a small character-level transformer, compress it with tt.compress, fine-tune, "
        "save and reload it."
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and of the batches")
    model = p.add_argument_group("model")
    model.add_argument("--d-model", type=positive_int, default=128, help="width of the model")
    model.add_argument(
        "--heads", type=positive_int, default=4, help="attention heads (must divide --d-model)"
    )
    model.add_argument("--layers", type=positive_int, default=2, help="transformer layers")
    model.add_argument("--ff", type=positive_int, default=512, help="width of the feedforward blocks")
    model.add_argument("--context", type=positive_int, default=64, help="characters per window")
    train = p.add_argument_group("training")
    train.add_argument("--steps", type=positive_int, default=1500, help="steps of dense training")
    train.add_argument("--finetune-steps", type=int, default=400, help="steps of fine-tuning after compress")
    train.add_argument("--batch-size", type=positive_int, default=32, help="windows per step")
    train.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of dense training")
    train.add_argument("--finetune-lr", type=float, default=1e-3, help="peak learning rate of fine-tuning")
    train.add_argument("--log-every", type=positive_int, default=250, help="print the training loss so often")
    budget = p.add_argument_group(
        "compression budget (one of; default --ratio 4)"
    ).add_mutually_exclusive_group()
    budget.add_argument("--ratio", type=float, help="compression factor of the selected layers, > 1")
    budget.add_argument("--max-tt-rank", type=int, help="one TT-rank cap for every layer, >= 1")
    budget.add_argument("--epsilon", type=float, help="relative error of every layer's weight, in (0, 1)")
    args = p.parse_args(argv)
    if args.d_model % args.heads:
        p.error(f"--d-model ({args.d_model}) must be divisible by --heads ({args.heads})")
    if args.finetune_steps < 0:
        p.error(f"--finetune-steps must be non-negative, got {args.finetune_steps}")
    for name in ("lr", "finetune_lr"):
        if not getattr(args, name) > 0:  # (NaN too)
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.ratio is None and args.max_tt_rank is None and args.epsilon is None:
        args.ratio = 4.0
    if args.ratio is not None and not args.ratio > 1:
        p.error(f"--ratio must be > 1, got {args.ratio}")
    if args.max_tt_rank is not None and args.max_tt_rank < 1:
        p.error(f"--max-tt-rank must be >= 1, got {args.max_tt_rank}")
    if args.epsilon is not None and not 0 < args.epsilon < 1:
        p.error(f"--epsilon must be in (0, 1), got {args.epsilon}")
    return args


# ----------------------------------------------------------------------------------------------- data


def load_corpus(modules: tuple[str, ...] = CORPUS_MODULES) -> str:
    """The source text of ``modules``, concatenated (an OSError naming the module if one has no source)."""
    parts = []
    for name in modules:
        try:
            parts.append(inspect.getsource(importlib.import_module(name)))
        except (OSError, TypeError) as e:
            raise OSError(
                f"no source text for the standard-library module {name!r} (is it installed?): {e}"
            ) from e
    return "\n".join(parts)


@dataclass
class Data:
    chars: list[str]  # id -> character; id 0 is <unk>
    train: torch.Tensor  # int64 ids
    val: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.chars)


def make_data(text: str, val_fraction: float = 0.1) -> Data:
    """Split ``text`` by position, build the vocabulary from the training part and encode both parts."""
    cut = int(len(text) * (1 - val_fraction))
    train_text, val_text = text[:cut], text[cut:]
    chars = [UNK, *sorted(set(train_text))]
    index = {c: i for i, c in enumerate(chars)}

    def encode(s: str) -> torch.Tensor:
        return torch.tensor([index.get(c, 0) for c in s], dtype=torch.long)

    return Data(chars, encode(train_text), encode(val_text))


def unigram_loss(data: Data) -> float:
    """Validation cross-entropy (nats/char) of the characters' training frequencies (add-one smoothed)."""
    counts = torch.bincount(data.train, minlength=data.vocab_size).double() + 1
    logp = (counts / counts.sum()).log()
    return float(-logp[data.val].mean())


def random_windows(ids: torch.Tensor, context: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """``batch`` random windows of ``context + 1`` consecutive ids (inputs and next-character targets)."""
    start = torch.randint(len(ids) - context, (batch,), generator=gen)
    return torch.stack([ids[s : s + context + 1] for s in start.tolist()])


# ---------------------------------------------------------------------------------------------- model


class CharTransformer(nn.Module):
    """A causal character LM: token + learned position embeddings, a pre-norm TransformerEncoder, a head."""

    def __init__(self, vocab: int, d_model: int, heads: int, layers: int, ff: int, context: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        # (the nested-tensor path is for padding masks, which a language model has none of; with pre-norm
        # layers torch turns it off anyway, with a warning: off from the start)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        mask = nn.Transformer.generate_square_subsequent_mask(context)  # -inf above the diagonal
        self.causal_mask: torch.Tensor
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, time, vocab)`` of the next character at each position of ``ids``."""
        t = ids.shape[1]
        h = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))
        h = self.encoder(h, mask=self.causal_mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def build_model(args: argparse.Namespace, vocab: int) -> CharTransformer:
    return CharTransformer(vocab, args.d_model, args.heads, args.layers, args.ff, args.context)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ train, evaluate


@torch.no_grad()
def evaluate(model: nn.Module, ids: torch.Tensor, context: int, batch: int = 256) -> float:
    """Mean cross-entropy in nats/char over ``ids`` cut into consecutive windows of ``context``."""
    was_training = model.training
    model.eval()
    n = (len(ids) - 1) // context
    inputs = ids[: n * context].view(n, context)
    targets = ids[1 : n * context + 1].view(n, context)
    total = 0.0
    for i in range(0, n, batch):
        logits = model(inputs[i : i + batch])
        total += float(
            F.cross_entropy(logits.flatten(0, 1), targets[i : i + batch].flatten(), reduction="sum")
        )
    model.train(was_training)
    return total / (n * context)


def schedule(steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over the first 5% of the steps, then cosine decay to 10%."""
    warm = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    return factor


def train(
    model: nn.Module, data: Data, args: argparse.Namespace, steps: int, lr: float, gen: torch.Generator
) -> None:
    """AdamW on random windows of the training text, with :func:`schedule` and gradients clipped to norm 1."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(steps))
    running = None
    for step in range(steps):
        batch = random_windows(data.train, args.context, args.batch_size, gen)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        value = loss.item()
        running = value if running is None else 0.9 * running + 0.1 * value
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            print(f"  step {step + 1:5d}  training loss {running:.3f} nats/char (moving average)")


# ----------------------------------------------------------------------------------------------- main


@dataclass
class Stage:
    name: str
    params: int
    loss: float  # validation nats/char

    @property
    def bits(self) -> float:
        return self.loss / math.log(2)


@dataclass
class Result:
    """What the run measured: the stages in order, the unigram baseline and the compression report."""

    stages: list[Stage] = field(default_factory=list)
    unigram: float = math.nan  # validation nats/char of the training text's character frequencies
    report: tt.CompressionReport | None = None
    replaced: list[str] = field(default_factory=list)  # names of the layers compress replaced
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of training, compress, fine-tuning
    # the models at the end: the trained dense one, the fine-tuned compressed one, its reloaded copy and its
    # dense equivalent
    dense: nn.Module | None = None
    small: nn.Module | None = None
    reloaded: nn.Module | None = None
    decompressed: nn.Module | None = None

    def __getitem__(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)


def summary_table(result: Result) -> str:
    rows = [("stage", "parameters", "val nats/char", "val bits/char")]
    rows.append(("unigram baseline", "", f"{result.unigram:.4f}", f"{result.unigram / math.log(2):.4f}"))
    rows += [(s.name, f"{s.params:,}", f"{s.loss:.4f}", f"{s.bits:.4f}") for s in result.stages]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> Result:
    t_start = time.perf_counter()
    result = Result()

    def record(name: str, model: nn.Module) -> Stage:
        stage = Stage(name, count_params(model), evaluate(model, data.val, args.context))
        result.stages.append(stage)
        print(
            f"{name}: {stage.params:,} parameters, validation {stage.loss:.4f} nats/char = "
            f"{stage.bits:.4f} bits/char"
        )
        return stage

    def timed(key: str, fn: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        fn()
        result.seconds[key] = time.perf_counter() - t0
        print(f"  ({key}: {result.seconds[key]:.1f} s)")

    text = load_corpus()
    data = make_data(text)
    print(
        f"corpus: {len(text):,} characters of {len(CORPUS_MODULES)} standard-library modules' source; "
        f"{len(data.train):,} train, {len(data.val):,} validation; vocabulary {data.vocab_size} "
        f"(<unk> included; {int((data.val == 0).sum())} validation characters unseen in training)"
    )
    result.unigram = unigram_loss(data)
    print(
        f"unigram baseline: validation {result.unigram:.4f} nats/char = "
        f"{result.unigram / math.log(2):.4f} bits/char"
    )

    torch.manual_seed(args.seed)  # the weights
    gen = torch.Generator().manual_seed(args.seed)  # the batches
    model = result.dense = build_model(args, data.vocab_size)
    record("untrained", model)

    print(
        f"\n1. dense training: {args.steps} steps of {args.batch_size} windows of {args.context} characters"
    )
    timed("dense training", lambda: train(model, data, args, args.steps, args.lr, gen))
    record("dense", model)

    budget = {
        k: getattr(args, k) for k in ("ratio", "max_tt_rank", "epsilon") if getattr(args, k) is not None
    }
    print(f"\n2. small, report = tt.compress(model, {', '.join(f'{k}={v}' for k, v in budget.items())})")
    t0 = time.perf_counter()
    small, report = tt.compress(model, **budget)  # the model itself is untouched (a deep copy is compressed)
    result.seconds["compress"] = time.perf_counter() - t0
    print(report)
    print(f"  (compress: {result.seconds['compress']:.1f} s)")
    result.small, result.report = small, report
    result.replaced = [layer.name for layer in report.layers if layer.replaced]
    dense_params, small_params = count_params(model), count_params(small)
    print(
        f"whole model: {dense_params:,} -> {small_params:,} parameters ({dense_params / small_params:.2f}x): "
        f"the selected layers shrank {report.ratio:.2f}x (the rest: the report's 'outside' line)"
    )
    record("compressed", small)

    print(f"\n3. fine-tuning the compressed model: {args.finetune_steps} steps")
    if args.finetune_steps:
        timed("fine-tuning", lambda: train(small, data, args, args.finetune_steps, args.finetune_lr, gen))
    tuned = record("fine-tuned", small)

    print("\n4. save its state_dict; build a fresh dense model, make the same layers TT (rank 1), load")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "small.pt")
        torch.save(small.state_dict(), path)
        print(f"  torch.save(small.state_dict(), path): {os.path.getsize(path):,} bytes")
        # (new random weights: loading overwrites every one)
        fresh: nn.Module = build_model(args, data.vocab_size)
        names = result.replaced  # store them beside the checkpoint
        if names:  # (compress refuses a model in which nothing matches)
            print(
                f"  fresh, _ = tt.compress(fresh, max_tt_rank=1, include=<the {len(names)} replaced names>)"
            )
            fresh, _ = tt.compress(fresh, max_tt_rank=1, include=[glob.escape(n) for n in names])
        fresh.load_state_dict(torch.load(path, weights_only=True))  # resizes the cores to the saved ranks
    result.reloaded = fresh
    reloaded = record("reloaded", fresh)
    same = "the same" if reloaded.loss == tuned.loss else f"{abs(reloaded.loss - tuned.loss):.2e} away from"
    print(f"  validation loss {same} as the fine-tuned model's")

    print("\n5. dense = tt.decompress(small): the exact dense equivalent of the fine-tuned model")
    result.decompressed = tt.decompress(small)
    record("decompressed", result.decompressed)

    print(f"\nsummary ({time.perf_counter() - t_start:.0f} s in all)")
    print(summary_table(result))
    return result


def main(argv: list[str] | None = None) -> Result:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
