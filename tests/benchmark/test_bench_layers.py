"""bench --layers: the layers it times are the ones it names (both layouts of every
convolution, the flop counts of the definition), and a run reports consistent rows."""

import numpy as np
import pytest

from cybn.benchmark import layers


def test_every_case_builds_the_layer_it_names():
    cases = layers.layer_cases()
    assert len(cases) == len(layers.LINEARS) + 2 * len(layers.CONVS)
    for name, layout, make, shape, macs in cases:
        layer = make(np.random.default_rng(0))
        y = layer(np.zeros(shape, np.float32))
        if name.startswith("Linear"):
            assert macs == shape[0] * layer.in_features * layer.out_features
            continue
        assert getattr(layer, "channels_last") == (layout == "NHWC")
        (kh, kw), out = layer.kernel_size, layer.out_channels
        pixels = y.shape[1] * y.shape[2] if layout == "NHWC" else y.shape[2] * y.shape[3]
        assert macs == shape[0] * out * pixels * layer.in_channels // layer.groups * kh * kw
        assert f"{layer.in_channels}-{out}" in name and ("depthwise" in name) == (
            layer.groups > 1)


def test_layers_suite_reports_consistent_rows(capsys):
    pytest.importorskip("torch")
    suite = [c for c in layers.layer_cases() if c[0].startswith(("Linear 512-512", "3x3/1 16"))]
    result = layers.layers_suite(repeats=2, suite=suite)
    assert len(result["rows"]) == 3 * len(suite)
    for row in result["rows"]:
        assert row["cybn_over_torch"] == pytest.approx(row["cybn_ms"] / row["torch_ms"])
        assert row["pass"] in layers.PASSES
    ratios = [r["cybn_over_torch"] for r in result["rows"]]
    assert result["summary"]["worst_cybn_over_torch"] == pytest.approx(max(ratios))
    assert "geometric mean" in capsys.readouterr().out
    assert "| layer |" in layers.layers_markdown(result)
