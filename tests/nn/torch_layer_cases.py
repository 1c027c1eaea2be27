"""The layer cases of tests/data/torch_layers.npz (made by
tools/fixtures/make_torch_layers_fixture.py with PyTorch): (name, layer class name in both
torch.nn and cybn, keyword arguments, NCHW input shape)."""

POOL_CASES = [
    ("max_stem", "MaxPool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, (2, 3, 9, 9)),
    ("max_stem_even", "MaxPool2d", {"kernel_size": 3, "stride": 2, "padding": 1},
     (2, 3, 8, 8)),
    ("max_ceil", "MaxPool2d", {"kernel_size": 3, "stride": 2, "ceil_mode": True},
     (2, 3, 10, 10)),
    ("max_ceil_odd", "MaxPool2d", {"kernel_size": 3, "stride": 2, "ceil_mode": True},
     (2, 4, 13, 13)),
    ("max_dilated", "MaxPool2d", {"kernel_size": 2, "stride": 1, "padding": 1, "dilation": 2},
     (2, 3, 7, 8)),
    ("max_rect", "MaxPool2d", {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0),
                               "ceil_mode": True}, (2, 2, 9, 7)),
    ("max_plain", "MaxPool2d", {"kernel_size": 2}, (2, 3, 6, 7)),
    # ceil mode where a last window would start in the padding: PyTorch drops it
    ("max_ceil_pad_drop", "MaxPool2d", {"kernel_size": 2, "stride": 2, "padding": 1,
                                        "ceil_mode": True}, (2, 3, 5, 7)),
    ("avg_ceil_pad_drop", "AvgPool2d", {"kernel_size": 2, "stride": 2, "padding": 1,
                                        "ceil_mode": True}, (2, 3, 5, 7)),
    ("avg_pad", "AvgPool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, (2, 3, 9, 9)),
    ("avg_pad_exclude", "AvgPool2d", {"kernel_size": 3, "stride": 2, "padding": 1,
                                      "count_include_pad": False}, (2, 3, 9, 9)),
    ("avg_ceil_pad", "AvgPool2d", {"kernel_size": 3, "stride": 2, "padding": 1,
                                   "ceil_mode": True}, (2, 3, 10, 10)),
    ("avg_ceil_exclude", "AvgPool2d", {"kernel_size": 2, "ceil_mode": True,
                                       "count_include_pad": False}, (2, 3, 7, 7)),
    ("avg_divisor", "AvgPool2d", {"kernel_size": 3, "stride": 2, "padding": 1,
                                  "divisor_override": 4}, (2, 3, 9, 9)),
    ("adaptive_avg", "AdaptiveAvgPool2d", {"output_size": (3, 5)}, (2, 3, 10, 7)),
    ("adaptive_avg_up", "AdaptiveAvgPool2d", {"output_size": (7, 4)}, (2, 3, 5, 6)),
    ("adaptive_avg_none", "AdaptiveAvgPool2d", {"output_size": (None, 2)}, (2, 3, 5, 6)),
    ("adaptive_avg_global", "AdaptiveAvgPool2d", {"output_size": 1}, (2, 3, 5, 6)),
    ("adaptive_max", "AdaptiveMaxPool2d", {"output_size": (2, 3)}, (2, 3, 7, 8)),
    ("adaptive_max_square", "AdaptiveMaxPool2d", {"output_size": 4}, (2, 3, 9, 9)),
]

ACTIVATION_CASES = [
    ("relu6", "ReLU6", {}, (3, 4, 5, 6)),
    ("hardtanh", "Hardtanh", {"min_val": -0.5, "max_val": 2.0}, (3, 4, 5, 6)),
    ("hardswish", "Hardswish", {}, (3, 4, 5, 6)),
    ("hardsigmoid", "Hardsigmoid", {}, (3, 4, 5, 6)),
    ("silu", "SiLU", {}, (3, 4, 5, 6)),
    ("sigmoid", "Sigmoid", {}, (3, 4, 5, 6)),
    ("tanh", "Tanh", {}, (3, 4, 5, 6)),
    ("gelu", "GELU", {}, (3, 4, 5, 6)),
    ("gelu_tanh", "GELU", {"approximate": "tanh"}, (3, 4, 5, 6)),
    ("leaky_relu", "LeakyReLU", {"negative_slope": 0.1}, (3, 4, 5, 6)),
    ("leaky_relu_default", "LeakyReLU", {}, (3, 4, 5, 6)),
]
