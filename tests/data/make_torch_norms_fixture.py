"""Writes torch_norms.npz: PyTorch's GroupNorm, InstanceNorm2d, LayerNorm and RMSNorm in a
Sequential (float64): the state_dict, an input, the outputs, the input gradient and the
parameter gradients of one training step, and the eval-mode output after it.

Needs PyTorch (pip install torch); the tests only read the .npz. Run from the repository root:
    python tests/data/make_torch_norms_fixture.py
"""

import numpy as np
import torch

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)
model = torch.nn.Sequential(
    torch.nn.GroupNorm(2, 6),
    torch.nn.InstanceNorm2d(6, affine=True, track_running_stats=True, momentum=0.2),
    torch.nn.LayerNorm((4, 5)),
    torch.nn.RMSNorm(5),
    torch.nn.RMSNorm((4, 5), eps=1e-3),
)
with torch.no_grad():  # parameters away from their initial ones and zeros
    for p in model.parameters():
        p.copy_(torch.randn_like(p) * 0.5 + 1.0)
x = torch.randn(3, 6, 4, 5) * 2 + 1
state_before = {k: v.clone().numpy() for k, v in model.state_dict().items()}
model.train()
x.requires_grad_(True)
y = model(x)
dy = torch.randn_like(y)
y.backward(dy)
model.eval()
with torch.no_grad():
    y_eval = model(x)
arrays = {f"state.{k}": v for k, v in state_before.items()}
arrays.update({f"after.{k}": v.numpy() for k, v in model.state_dict().items()})
arrays.update({f"grad.{k}": p.grad.numpy() for k, p in model.named_parameters()})
arrays.update(x=x.detach().numpy(), y=y.detach().numpy(), dy=dy.numpy(),
              dx=x.grad.numpy(), y_eval=y_eval.numpy())
np.savez("tests/data/torch_norms.npz", **arrays)
print(sorted(arrays))
