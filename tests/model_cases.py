"""The whole-model cases of tests/data/torch_models.npz (made by
tools/fixtures/make_torch_models_fixture.py with torchvision's own model definitions):
builders, deterministic weights (no random generator: the same values on every NumPy), the
input and the output gradient, and the probes that condense a gradient into one number."""

import numpy as np

# (name, builder name in cybn.models and torchvision.models, keyword arguments)
MODEL_CASES = [
    ("resnet18", "resnet18", {"num_classes": 10}),
    ("resnet50", "resnet50", {"num_classes": 10}),
    ("mobilenet_v2", "mobilenet_v2", {"num_classes": 10, "width_mult": 0.5, "dropout": 0.0}),
    ("squeezenet1_1", "squeezenet1_1", {"num_classes": 10, "dropout": 0.0}),
    ("shufflenet_v2_x0_5", "shufflenet_v2_x0_5", {"num_classes": 10}),
]
INPUT_SHAPE = (2, 3, 64, 64)  # NCHW, float64


def _wave(n: int, phase: float, step: float = 0.61) -> np.ndarray:
    return np.sin(np.arange(n) * step + phase)


def model_state(shapes) -> dict:
    """Weights and buffers for ``{key: shape}`` in order: He-scaled convolution and linear
    weights, batch norm scales near 1, small shifts, positive running variances."""
    state = {}
    for j, (key, shape) in enumerate(shapes.items()):
        n = int(np.prod(shape))
        w = _wave(n, 1.3 * j).reshape(shape)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            state[key] = np.array(j % 5, dtype=np.int64)
        elif leaf == "running_var":
            state[key] = 1.0 + 0.5 * w * w
        elif leaf in ("running_mean", "bias"):
            state[key] = 0.1 * w
        elif len(shape) == 1:  # a batch norm's weight
            state[key] = 1.0 + 0.2 * w
        else:  # sin has variance 1/2: std sqrt(2 / fan_in), He's
            state[key] = w * 2.0 / np.sqrt(np.prod(shape[1:]))
    return state


def model_input() -> np.ndarray:
    return _wave(int(np.prod(INPUT_SHAPE)), 0.2, 0.37).reshape(INPUT_SHAPE) * 1.5


def output_grad(shape) -> np.ndarray:
    return np.cos(np.arange(int(np.prod(shape))) * 0.53).reshape(shape)


def probe(a: np.ndarray, j: int) -> float:
    """One number that a changed gradient (or buffer) entry changes."""
    a = np.asarray(a, dtype=np.float64).ravel()
    return float(a @ np.cos(np.arange(a.size) * 0.37 + 0.5 * j))
