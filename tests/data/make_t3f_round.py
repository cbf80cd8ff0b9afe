"""Writes t3f_round.npz: t3f 1.2.0's ``round`` on fixed cores, the reference of
``tests/test_decompositions.py::test_round_equals_t3f``. Run in a TensorFlow environment with t3f (see
``benchmarks/t3f_tutorial.py`` for one): ``tf/bin/python tests/data/make_t3f_round.py``; not part of the suite."""

import numpy as np

np.int = int  # type: ignore[attr-defined]  # (t3f 1.2.0 uses np.int, removed in NumPy 1.24)
np.float = float  # type: ignore[attr-defined]
np.bool = bool  # type: ignore[attr-defined]

import t3f  # noqa: E402
import tensorflow as tf  # noqa: E402

rng = np.random.default_rng(0)


def cores(shape, ranks, mat=False):
    return [
        rng.standard_normal((ranks[k],) + (shape[k] if mat else (shape[k],)) + (ranks[k + 1],))
        for k in range(len(ranks) - 1)
    ]


t = cores((4, 5, 6, 3), (1, 6, 9, 6, 1))
m = cores(((2, 3), (3, 2), (2, 2)), (1, 5, 7, 1), mat=True)
bt = [rng.standard_normal((3, *c.shape)) for c in cores((3, 4, 5), (1, 4, 5, 1))]
out = {}
for name, cs in (("t", t), ("m", m), ("b", bt)):
    for i, c in enumerate(cs):
        out[f"{name}_core{i}"] = c
T = t3f.TensorTrain([tf.constant(c) for c in t])
M = t3f.TensorTrain([tf.constant(c) for c in m])
B = t3f.TensorTrainBatch([tf.constant(c) for c in bt])
for r in (1, 2, 3):
    out[f"t_round{r}"] = t3f.full(t3f.round(T, r)).numpy()
    out[f"m_round{r}"] = t3f.full(t3f.round(M, r)).numpy()
    out[f"b_round{r}"] = t3f.full(t3f.round(B, r)).numpy()
out["t_round_caps"] = t3f.full(t3f.round(T, [1, 3, 2, 4, 1])).numpy()
out["t_round2_core0_norm"] = np.linalg.norm(t3f.round(T, 2).tt_cores[0].numpy())
np.savez_compressed("t3f_round.npz", **out)
