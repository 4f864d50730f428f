"""The Triton kernels as ``torch.library`` custom ops, so torch.compile / torch.export treat
them as opaque calls with known output shapes (``register_fake``) instead of tracing into the
launcher.

- ``torch.ops.tte2tee.lora_linear(x, weight, bias, lora_A, lora_B, scales, adapter_index, act)``
- ``torch.ops.tte2tee.spade_norm_act(x, gamma, beta, emb_scale, emb_shift, num_groups, eps, act)``

Each op runs the Triton launcher on CUDA tensors and the pure-torch reference on any other
device (so ``torch.library.opcheck`` can exercise it on the CPU). The public functions
(``lora_linear``, ``spade_norm_act``) call these ops only on CUDA; on the CPU they call the
references directly, which stay plain torch ops and so remain exportable to ONNX.
Registering happens when this module is first imported (by the public functions, lazily).
No autograd formula is registered: the ops are for inference.
"""

from __future__ import annotations

import torch

from .lora_linear import lora_linear_reference, lora_linear_triton
from .spade import spade_norm_act_reference, spade_norm_act_triton


@torch.library.custom_op("tte2tee::lora_linear", mutates_args=())
def lora_linear_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scales: torch.Tensor,
    adapter_index: torch.Tensor,
    act: str,
) -> torch.Tensor:
    """``act(x @ W.T + b + s[a] (x @ A[a].T) @ B[a].T)`` per row; see ``kernels/lora_linear.py``."""
    fn = lora_linear_triton if x.is_cuda else lora_linear_reference
    return fn(x, weight, bias, lora_A, lora_B, scales, adapter_index, act)


@lora_linear_op.register_fake
def _lora_linear_fake(x, weight, bias, lora_A, lora_B, scales, adapter_index, act):
    torch._check(x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[1])
    return x.new_empty((x.shape[0], weight.shape[0]))  # [M, out]


@torch.library.custom_op("tte2tee::spade_norm_act", mutates_args=())
def spade_norm_act_op(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    emb_scale: torch.Tensor | None,
    emb_shift: torch.Tensor | None,
    num_groups: int,
    eps: float,
    act: str,
) -> torch.Tensor:
    """``act(GroupNorm(x) * (1 + gamma) + beta)`` [then ``* (1 + scale) + shift``]; see
    ``kernels/spade.py``."""
    fn = spade_norm_act_triton if x.is_cuda else spade_norm_act_reference
    return fn(x, gamma, beta, num_groups, eps, act, emb_scale, emb_shift)


@spade_norm_act_op.register_fake
def _spade_norm_act_fake(x, gamma, beta, emb_scale, emb_shift, num_groups, eps, act):
    torch._check(x.dim() == 4 and gamma.shape == x.shape and beta.shape == x.shape)
    return torch.empty_like(x, memory_format=torch.contiguous_format)  # [B, C, H, W]
