"""The worked examples: examples/insert_and_fold.py (inserting and folding batch norm keep
the network's function, the accuracy figures the README reports) and
examples/serve_resnet18.py (a converted ResNet-18 served without PyTorch)."""

import os
import sys

import numpy as np
import pytest

import cybn


sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))


def test_insert_and_fold_example_keeps_the_function():
    pytest.importorskip("sklearn")
    import insert_and_fold

    fig = insert_and_fold.main(epochs=1, finetune_epochs=1, high_lr=0.1)
    assert fig["after inserting BN"] == fig["trained, no BN"]
    assert fig["folded back"] == fig["fine-tuned at high lr, with BN"]
    assert fig["max |folded - unfolded| logits"] < 1e-3
    assert fig["inference ms, folded"] > 0


def test_serving_example_runs_without_pytorch(tmp_path, monkeypatch):
    """examples/serve_resnet18.py: a checkpoint with torchvision's keys (written here from
    cybn.models.resnet18, whose keys the builder tests check against torchvision's) is
    served, folded, without importing PyTorch, and computes what the unfolded model does."""
    import serve_resnet18

    monkeypatch.setitem(sys.modules, "torch", None)  # importing torch would now fail
    source = cybn.models.resnet18(rng=0)
    path = tmp_path / "resnet18.npz"
    np.savez(path, **source.state_dict())
    result = serve_resnet18.serve(str(path), batch=2, repeats=1)
    x = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32)
    want = source.eval()(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(result["logits"], want, rtol=0, atol=2e-4 * np.abs(want).max())
    assert result["ms"] > 0
