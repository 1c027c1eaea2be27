"""The worked example examples/insert_and_fold.py: inserting and folding batch norm keep the
network's function (the accuracy figures the README reports)."""

import os
import sys

import pytest

pytest.importorskip("sklearn")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))


def test_insert_and_fold_example_keeps_the_function():
    import insert_and_fold

    fig = insert_and_fold.main(epochs=1, finetune_epochs=1, high_lr=0.1)
    assert fig["after inserting BN"] == fig["trained, no BN"]
    assert fig["folded back"] == fig["fine-tuned at high lr, with BN"]
    assert fig["max |folded - unfolded| logits"] < 1e-3
    assert fig["inference ms, folded"] > 0
