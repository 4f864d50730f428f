"""SPADE modulation as one Triton kernel: GroupNorm (no affine) + ``x * (1 + gamma) + beta``
[+ the ResBlock's time-embedding scale/shift] [+ SiLU], two passes over each group.

Contract (kernel and reference alike)::

    y = act(GroupNorm(x, num_groups, eps) * (1 + gamma) + beta)                 or, with emb,
    y = act((GroupNorm(x) * (1 + gamma) + beta) * (1 + emb_scale) + emb_shift)
    x, gamma, beta        [B, C, H, W]  fp32 / fp16 / bf16, one dtype, contiguous NCHW
    emb_scale, emb_shift  [B, C] (or [B, C, 1, 1]), optional, both or neither
    act                   "none" | "silu"
    y                     [B, C, H, W]  dtype of x

The reference is the model's own arithmetic (``tte2tee_fast.models.blocks``: ``F.group_norm``
as ``nn.GroupNorm(affine=False)`` computes it, then :func:`spade_modulate`, then the ResBlock's
``* (1 + scale) + shift``, then SiLU), each step rounded to ``x.dtype`` as the model does. The
kernel keeps everything in fp32 and rounds once, so in fp16 / bf16 it is the more accurate of
the two and agrees to the dtype's rounding.

Kernel: one program per (sample, group). In NCHW a group is one contiguous run of
``C / num_groups * H * W`` elements. Pass 1 accumulates fp32 sums of ``x - x0`` and its square
(``x0`` = the group's first element: shifting removes the cancellation of E[x²] - E[x]² when
the mean is large against the spread); pass 2 normalises, modulates, activates and stores.
So x is read twice, gamma / beta once, y written once. One program per group limits the
parallelism to B * num_groups programs (fine at batch >= 8 with 32 groups; a split-group
variant with atomics would be the next step for batch 1).

Dispatch (``kernels/ops.py``): ``spade_norm_act`` runs the kernel on CUDA (custom op
``torch.ops.tte2tee.spade_norm_act``), the reference elsewhere and when autograd needs
gradients.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tte2tee_fast.errors import InputError

from ._triton import launch_meta, lazy_kernel, maybe_autotune, require_complete_interpreter

ACTS = ("none", "silu")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Meta-parameters used under the interpreter (no autotune there).
DEFAULT_META = {"BLOCK": 1024, "num_warps": 4}


def _configs() -> list[Any]:
    import triton

    return [
        triton.Config({"BLOCK": b}, num_warps=nw)
        for b, nw in ((512, 4), (1024, 4), (2048, 8), (4096, 8), (8192, 16))
    ]


@lazy_kernel
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @maybe_autotune(_configs(), key=["GROUP_SIZE", "HW"])
    @triton.jit
    def spade_norm_act_kernel(
        x_ptr,  # [B, C, H, W] contiguous
        g_ptr,  # gamma, same layout
        b_ptr,  # beta, same layout
        sc_ptr,  # [B, C] emb scale (unused without HAS_EMB)
        sh_ptr,  # [B, C] emb shift
        y_ptr,  # [B, C, H, W]
        C,
        HW,
        CG,  # channels per group
        GROUP_SIZE,  # CG * HW
        NUM_GROUPS,
        inv_n,  # 1 / GROUP_SIZE
        eps,
        HAS_EMB: tl.constexpr,
        ACT: tl.constexpr,  # index into ACTS
        BLOCK: tl.constexpr,
    ):
        # this program's group: one contiguous run (int64: B*C*H*W may pass 2**31)
        pid = tl.program_id(0).to(tl.int64)  # = sample * NUM_GROUPS + group
        base = pid * GROUP_SIZE
        offs = tl.arange(0, BLOCK)
        # pass 1: fp32 sums of the shifted values
        x0 = tl.load(x_ptr + base).to(tl.float32)
        s1 = tl.zeros((BLOCK,), dtype=tl.float32)
        s2 = tl.zeros((BLOCK,), dtype=tl.float32)
        for start in range(0, GROUP_SIZE, BLOCK):
            idx = start + offs
            m = idx < GROUP_SIZE
            d = tl.where(m, tl.load(x_ptr + base + idx, mask=m, other=0.0).to(tl.float32) - x0, 0.0)
            s1 += d
            s2 += d * d
        mean_d = tl.sum(s1, axis=0) * inv_n
        var = tl.maximum(tl.sum(s2, axis=0) * inv_n - mean_d * mean_d, 0.0)
        mean = x0 + mean_d
        rstd = 1.0 / tl.sqrt(var + eps)
        # pass 2: normalise, modulate, (emb scale-shift), activate, store
        sample = pid // NUM_GROUPS
        chan0 = (pid - sample * NUM_GROUPS) * CG
        for start in range(0, GROUP_SIZE, BLOCK):
            idx = start + offs
            m = idx < GROUP_SIZE
            p = base + idx
            v = tl.load(x_ptr + p, mask=m, other=0.0).to(tl.float32)
            gm = tl.load(g_ptr + p, mask=m, other=0.0).to(tl.float32)
            bt = tl.load(b_ptr + p, mask=m, other=0.0).to(tl.float32)
            h = (v - mean) * rstd * (1.0 + gm) + bt
            if HAS_EMB:
                c = sample * C + chan0 + idx // HW  # [BLOCK] row of the [B, C] tables
                sc = tl.load(sc_ptr + c, mask=m, other=0.0).to(tl.float32)
                sh = tl.load(sh_ptr + c, mask=m, other=0.0).to(tl.float32)
                h = h * (1.0 + sc) + sh
            if ACT == 1:  # silu
                h = h / (1.0 + tl.exp(-h))
            tl.store(y_ptr + p, h.to(y_ptr.dtype.element_ty), mask=m)

    return spade_norm_act_kernel


def _emb_table(t: torch.Tensor | None, name: str, b: int, c: int) -> torch.Tensor | None:
    """``[B, C]`` view of an optional ``[B, C]`` / ``[B, C, 1, 1]`` emb scale or shift."""
    if t is None:
        return None
    if tuple(t.shape) not in ((b, c), (b, c, 1, 1)):
        raise InputError(f"{name} must be [{b}, {c}] or [{b}, {c}, 1, 1], got {tuple(t.shape)}")
    return t.reshape(b, c)


def spade_modulate(x_normed: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """SPADE modulation of an already normalised activation: ``x * (1 + gamma) + beta``."""
    return x_normed * (1 + gamma) + beta


def _check(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    num_groups: int,
    act: str,
    emb_scale: torch.Tensor | None,
    emb_shift: torch.Tensor | None,
) -> None:
    if act not in ACTS:
        raise InputError(f"activation {act!r} not supported; choose one of {ACTS}")
    if x.dim() != 4:
        raise InputError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise InputError(f"x dtype {x.dtype} not supported; choose one of {DTYPES}")
    b, c = x.shape[:2]
    if num_groups < 1 or c % num_groups:
        raise InputError(f"num_groups {num_groups} must divide the {c} channels")
    if (emb_scale is None) != (emb_shift is None):
        raise InputError("give both emb_scale and emb_shift, or neither")
    named = {"gamma": gamma, "beta": beta}
    for name, t in (("emb_scale", emb_scale), ("emb_shift", emb_shift)):
        if t is not None:
            named[name] = t
            _emb_table(t, name, b, c)
    for name, t in named.items():
        if name in ("gamma", "beta") and t.shape != x.shape:
            raise InputError(f"{name} must match x {tuple(x.shape)}, got {tuple(t.shape)}")
        if t.dtype != x.dtype:
            raise InputError(f"{name} is {t.dtype} but x is {x.dtype}: use one dtype")
        if t.device != x.device:
            raise InputError(f"{name} on {t.device} but x on {x.device}")


def spade_norm_act_reference(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    num_groups: int,
    eps: float = 1e-5,
    act: str = "none",
    emb_scale: torch.Tensor | None = None,
    emb_shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """The model's arithmetic, step by step in ``x.dtype`` (see the module docstring)."""
    _check(x, gamma, beta, num_groups, act, emb_scale, emb_shift)
    b, c = x.shape[:2]
    h = spade_modulate(F.group_norm(x, num_groups, eps=eps), gamma, beta)  # [B, C, H, W]
    if emb_scale is not None:
        scale = _emb_table(emb_scale, "emb_scale", b, c)[:, :, None, None]  # [B, C, 1, 1]
        shift = _emb_table(emb_shift, "emb_shift", b, c)[:, :, None, None]
        h = h * (1 + scale) + shift
    return F.silu(h) if act == "silu" else h


def spade_norm_act_triton(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    num_groups: int,
    eps: float = 1e-5,
    act: str = "none",
    emb_scale: torch.Tensor | None = None,
    emb_shift: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the kernel. ``out`` (optional) is a preallocated contiguous output to fill."""
    _check(x, gamma, beta, num_groups, act, emb_scale, emb_shift)
    for name, t in (("x", x), ("gamma", gamma), ("beta", beta)):
        if not t.is_contiguous():
            raise InputError(f"{name} must be contiguous NCHW")
    require_complete_interpreter("spade_norm_act")
    b, c, h, w = x.shape
    has_emb = emb_scale is not None
    scale = _emb_table(emb_scale, "emb_scale", b, c).contiguous() if has_emb else x
    shift = _emb_table(emb_shift, "emb_shift", b, c).contiguous() if has_emb else x
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    elif out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous():
        raise InputError(
            f"out must be a contiguous {x.dtype} tensor of shape {tuple(x.shape)}, got "
            f"{out.dtype} {tuple(out.shape)}"
        )
    if x.numel() == 0:
        return out
    cg = c // num_groups
    _kernel()[(b * num_groups,)](
        x, gamma, beta, scale, shift, out,
        c, h * w, cg, cg * h * w, num_groups, 1.0 / (cg * h * w), float(eps),
        HAS_EMB=has_emb,
        ACT=ACTS.index(act),
        **launch_meta(DEFAULT_META),
    )  # fmt: skip
    return out
