"""ONNX export of TT layers (torch.onnx.export, dynamo exporter, opset 18) served by onnxruntime on CPU.

The exported graph must give PyTorch's outputs for any batch size (the batch axis is exported dynamic).
torch 2.9+ defaults to the dynamo (torch.export-based) exporter; the legacy TorchScript exporter is
deprecated, so it is not what we document or test.
"""

from __future__ import annotations

import pytest
import torch

import tensortrain as tt

onnx = pytest.importorskip("onnx", reason="the optional 'onnx' extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the optional 'onnx' extra (onnxruntime) is not installed")
pytest.importorskip("onnxscript", reason="the optional 'onnx' extra (onnxscript) is not installed")

OPSET = 18

# The exporter itself (not our code) emits this deprecation from torch.utils._pytree in torch 2.13.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
)


class Model(torch.nn.Module):
    """A TT classifier head: TTLinear -> ReLU -> TTLinear.

    The cost planner contracts fc1 by sweeping the input through the cores and fc2 by building its small
    weight (``tt.contraction.plan``), so the export covers both kinds of contraction.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = tt.nn.TTLinear(1024, 64, tt_rank=2, in_dims=(4, 4, 8, 8), out_dims=(2, 2, 4, 4))
        self.fc2 = tt.nn.TTLinear(64, 5, tt_rank=2, in_dims=(8, 8), out_dims=(5, 1), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_export_and_run_with_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = Model().eval()
    path = tmp_path / "model.onnx"
    x = torch.randn(4, 1024)
    torch.onnx.export(
        model,
        (x,),
        path,
        dynamo=True,
        opset_version=OPSET,
        input_names=["x"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert {o.domain: o.version for o in proto.opset_import}[""] == OPSET

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    for batch in (1, 4, 9):
        xb = torch.randn(batch, 1024)
        (got,) = session.run(None, {"x": xb.numpy()})
        with torch.no_grad():
            expected = model(xb)
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-5, atol=1e-5)


class EmbeddingModel(torch.nn.Module):
    """TTEmbedding -> mean over the sequence -> TTLinear, padded (8 -> 9 inputs, 5 -> 6 outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = tt.nn.TTEmbedding(20, 8, tt_rank=3, voc_dims=(4, 5), emb_dims=(2, 4))
        self.fc = tt.nn.TTLinear(8, 5, tt_rank=2, in_dims=(3, 3), out_dims=(3, 2), pad=True)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(idx).mean(dim=-2))


def test_export_embedding_model(tmp_path):
    torch.manual_seed(0)
    model = EmbeddingModel().eval()
    path = tmp_path / "emb.onnx"
    idx = torch.tensor([[0, 7, 7], [19, 3, 12]])
    torch.onnx.export(
        model,
        (idx,),
        path,
        dynamo=True,
        opset_version=OPSET,
        input_names=["idx"],
        dynamic_shapes={"idx": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    for batch in (1, 2, 5):
        ib = torch.randint(0, 20, (batch, 3), generator=g)
        (got,) = session.run(None, {"idx": ib.numpy()})
        with torch.no_grad():
            expected = model(ib)
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-5, atol=1e-5)
    assert expected.shape == (5, 5) and model.fc.padded


def test_exported_embedding_refuses_indices_outside_the_table(tmp_path):
    """Traced lookups sent out-of-range indices to -1, and onnxruntime's Gather wraps negative indices: -1, 18 (a
    padded row) and 500 all silently returned the table's last (padded) row."""
    torch.manual_seed(0)
    emb = tt.nn.TTEmbedding(18, 8, tt_rank=3, voc_dims=(4, 5), emb_dims=(2, 4)).eval()  # 20 rows, 2 padded
    path = tmp_path / "emb.onnx"
    torch.onnx.export(
        emb,
        (torch.tensor([[1, 2], [3, 4]]),),
        path,
        dynamo=True,
        opset_version=OPSET,
        input_names=["idx"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    good = torch.tensor([[0, 17], [5, 9]])
    (got,) = session.run(None, {"idx": good.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), emb(good), rtol=1e-5, atol=1e-5)
    for bad in (18, 19, 500, -1):
        with pytest.raises(Exception, match="out of data bounds"):
            session.run(None, {"idx": torch.tensor([[1, bad], [2, 3]]).numpy()})


def test_readme_recipe_exports_a_sequential(tmp_path):
    """The README's call, on an nn.Sequential (whose forward argument is named ``input``, not ``x``): the
    dynamic shapes are given positionally."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        tt.nn.TTLinear(784, 625, tt_rank=4, in_dims=(7, 4, 7, 4), out_dims=(5, 5, 5, 5)),
        torch.nn.ReLU(),
        torch.nn.Linear(625, 10),
    )
    x = torch.randn(5, 784)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model.eval(), (x,), path, dynamo=True, opset_version=18,
                      input_names=["x"], dynamic_shapes=({0: torch.export.Dim("batch")},))  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 17):
        xb = torch.randn(batch, 784)
        (got,) = session.run(None, {"x": xb.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), model(xb), rtol=1e-5, atol=1e-5)
