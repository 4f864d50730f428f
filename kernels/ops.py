"""Registration and dispatch of the kernels: each public function picks the Triton kernel or
the torch reference of its kernel file (``kernels/lora_linear.py``, ``kernels/spade.py``,
``kernels/maskr2.py``; those files import nothing from here).

The custom ops (``torch.library``), so torch.compile / torch.export treat the CUDA kernels as
opaque calls with known output shapes (``register_fake``) instead of tracing into the launcher:

- ``torch.ops.tte2tee.lora_linear(x, weight, bias, lora_A, lora_B, scales, adapter_index, act)``
- ``torch.ops.tte2tee.spade_norm_act(x, gamma, beta, emb_scale, emb_shift, num_groups, eps, act)``

Each op runs the Triton launcher on CUDA tensors and the pure-torch reference on any other
device (so ``torch.library.opcheck`` can exercise it on the CPU). The public functions
(:func:`lora_linear`, :func:`spade_norm_act`) call these ops only on CUDA; on the CPU they call
the references directly (or the kernel under the interpreter when forced), which stay plain
torch ops and so remain exportable to ONNX. :func:`maskr2_one_hot` launches its kernel
directly (no op: it is not inside a compiled model). Registering the ops happens when this
module is first imported. No autograd formula is registered: the ops are for inference.

``force_triton`` everywhere: True runs the kernel (CUDA, or CPU under TRITON_INTERPRET=1),
False the reference, None decides by device (and ``TTE2TEE_TRITON``, see ``_triton.py``).
"""

from __future__ import annotations

import torch

from ._triton import use_triton
from .lora_linear import lora_linear_reference, lora_linear_triton
from .maskr2 import LABEL_DTYPES, maskr2_one_hot_reference, maskr2_one_hot_triton
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


# ----------------------------------------------------------------------------- dispatch


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scales: torch.Tensor,
    adapter_index: torch.Tensor,
    act: str = "none",
    force_triton: bool | None = None,
) -> torch.Tensor:
    """Multi-adapter LoRA linear on ``x [..., in]`` with ``adapter_index [rows]`` (rows = the
    product of x's leading dims). Triton on CUDA (custom op), the reference elsewhere and when
    autograd needs gradients."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # [M, in]
    args = (weight, bias, lora_A, lora_B, scales, adapter_index)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *args))
    if not grad and use_triton(x, weight, force=force_triton):
        if x.is_cuda:
            y = lora_linear_op(x2.contiguous(), *(_contig(t) for t in args), act)
        else:  # the interpreter (tests)
            y = lora_linear_triton(x2.contiguous(), *(_contig(t) for t in args), act)
    else:
        y = lora_linear_reference(x2, *args, act)
    return y.reshape(*lead, weight.shape[0])


def _contig(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def spade_norm_act(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    num_groups: int,
    eps: float = 1e-5,
    act: str = "none",
    emb_scale: torch.Tensor | None = None,
    emb_shift: torch.Tensor | None = None,
    force_triton: bool | None = None,
) -> torch.Tensor:
    """SPADE group norm + modulation [+ emb scale-shift] [+ SiLU]: the Triton kernel on CUDA,
    the reference elsewhere and when autograd needs gradients;"""
    tensors = [t for t in (x, gamma, beta, emb_scale, emb_shift) if t is not None]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if grad or not use_triton(*tensors, force=force_triton):
        return spade_norm_act_reference(x, gamma, beta, num_groups, eps, act, emb_scale, emb_shift)
    x, gamma, beta = x.contiguous(), gamma.contiguous(), beta.contiguous()
    if x.is_cuda:
        return spade_norm_act_op(x, gamma, beta, emb_scale, emb_shift, num_groups, eps, act)
    return spade_norm_act_triton(x, gamma, beta, num_groups, eps, act, emb_scale, emb_shift)


def maskr2_one_hot(
    labels: torch.Tensor,
    lut: torch.Tensor,
    num_channels: int,
    dtype: torch.dtype = torch.float32,
    layout: str = "nchw",
    force_triton: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskR² one-hot: the Triton kernel on CUDA, the torch reference elsewhere.

    Returns ``(out, unmapped)`` as described in the module docstring. ``force_triton``: True
    runs the kernel (CUDA, or CPU under TRITON_INTERPRET=1), False the reference, None decides
    by device (and ``TTE2TEE_TRITON``).
    """
    if use_triton(labels, lut, force=force_triton):
        if labels.dtype not in LABEL_DTYPES:  # int8 / int16: widen, the kernel reads 3 dtypes
            labels = labels.to(torch.int32)
        return maskr2_one_hot_triton(
            labels.contiguous(), lut.contiguous(), num_channels, dtype, layout
        )
    return maskr2_one_hot_reference(labels, lut, num_channels, dtype, layout)
