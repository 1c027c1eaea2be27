"""Writes torch_sequential.npz: a PyTorch model's state_dict, an input and its outputs.

Needs PyTorch (pip install torch); the tests only read the .npz. Run from the repository root:
    python tests/data/make_torch_fixture.py
"""

import numpy as np
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Conv2d(2, 3, 3, padding=1),
    torch.nn.BatchNorm2d(3),
    torch.nn.ReLU(),
    torch.nn.MaxPool2d(2),
    torch.nn.Flatten(),
    torch.nn.Linear(3 * 2 * 2, 5),
    torch.nn.BatchNorm1d(5, momentum=None),
)
x = torch.randn(6, 2, 4, 4, dtype=torch.float32)
model.train()
with torch.no_grad():
    for step in range(3):  # move the running statistics away from their initial values
        model(x * (step + 1) + step)
    y_train = model(x)  # one more training step: the state saved is after it
model.eval()
with torch.no_grad():
    y_eval = model(x)
arrays = {f"state.{k}": v.numpy() for k, v in model.state_dict().items()}
arrays.update(x=x.numpy(), y_train=y_train.numpy(), y_eval=y_eval.numpy())
np.savez("tests/data/torch_sequential.npz", **arrays)
print(sorted(arrays))
