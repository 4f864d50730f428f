"""MaskR² remap + one-hot as one Triton kernel (one pass over the label map).

Layout as in the Triton tutorials: the ``@triton.jit`` kernel (built lazily, triton is imported
only on first use), autotune configs, a launcher that checks shapes / dtypes / contiguity and
allocates, and the pure-torch reference -- which is
:func:`tte2tee_fast.condition.maskr2.one_hot_from_lut`, the implementation every other caller uses.

Contract (kernel and reference alike)::

    out, unmapped = maskr2_one_hot(labels, lut, num_channels, dtype, layout)
    labels    [B, H, W]  uint8 / int32 / int64 (int16 too on the reference path)
    lut       [V]        int32 / int64, source value -> base channel, -1 unmapped
    out       [B, C, H, W] ("nchw") or [B, H, W, C] ("nhwc"), fp32 / fp16 / bf16, one-hot
    unmapped  [1] int32: 1 when some pixel maps to no channel (value < 0, >= V, or a -1 /
              out-of-range entry of lut), else 0. Such pixels get all-zero channels.

The kernel never reads outside ``labels`` or ``lut``: lanes past the end are masked, and an
out-of-range label is replaced by index 0 and masked before the table gather. ``unmapped`` is
set by a masked ``atomic_max`` that only unmapped pixels execute, so a valid map costs no
atomics; reading it is the only sync, and only if you do.

Dispatch (``kernels/ops.py``, ``maskr2_one_hot``): Triton for CUDA tensors (when triton
imports), the reference elsewhere;
``force_triton=True`` (or ``TTE2TEE_TRITON=1``) runs the kernel on CPU tensors under
``TRITON_INTERPRET=1`` (see ``tte2tee_fast.kernels._triton``).
"""

from __future__ import annotations

from typing import Any

import torch

from tte2tee_fast.condition.maskr2 import one_hot_from_lut
from tte2tee_fast.errors import InputError

from ._triton import launch_meta, lazy_kernel, maybe_autotune

LAYOUTS = ("nchw", "nhwc")
LABEL_DTYPES = (torch.uint8, torch.int32, torch.int64)
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Meta-parameters used under the interpreter (no autotune there); one of the configs below.
DEFAULT_META = {"BLOCK_P": 1024, "num_warps": 4}


def _configs() -> list[Any]:
    import triton

    return [
        triton.Config({"BLOCK_P": bp}, num_warps=nw)
        for bp, nw in ((256, 2), (512, 4), (1024, 4), (2048, 8), (4096, 8))
    ]


@lazy_kernel
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @maybe_autotune(_configs(), key=["n_pixels", "num_channels", "stride_c"])
    @triton.jit
    def maskr2_one_hot_kernel(
        labels_ptr,  # [B*H*W] integer labels
        lut_ptr,  # [V] int32/int64 source value -> channel
        out_ptr,  # one-hot output, addressed through the strides below
        flag_ptr,  # [1] int32, atomic max of "some pixel unmapped"
        n_pixels,  # B*H*W
        hw,  # H*W
        lut_len,  # V
        num_channels,  # C
        stride_b,  # output strides in elements: batch, channel, pixel within an image
        stride_c,
        stride_p,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        # pixels of this block (int64 offsets: B*C*H*W may pass 2**31)
        pid = tl.program_id(0).to(tl.int64)
        offs = pid * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P]
        in_range = offs < n_pixels
        # labels -> table index; out-of-range values never reach the gather
        lab = tl.load(labels_ptr + offs, mask=in_range, other=0).to(tl.int64)
        inside = in_range & (lab >= 0) & (lab < lut_len)
        chan = tl.load(lut_ptr + tl.where(inside, lab, 0), mask=inside, other=-1).to(tl.int32)
        # flag pixels that light no channel: a masked atomic, so none run on valid maps
        # (builtins only -- no tl.max: see _triton.py on the interpreter and import order)
        unmapped = in_range & ((chan < 0) | (chan >= num_channels))
        tl.atomic_max(flag_ptr + offs * 0, unmapped.to(tl.int32), mask=unmapped)
        # one-hot tile [BLOCK_P, BLOCK_C], stored through the layout's strides
        cs = tl.arange(0, BLOCK_C)  # [BLOCK_C]
        # bool -> fp32 -> out dtype: the interpreter turns bool -> bf16 into the bits 0x0001
        hot = (chan[:, None] == cs[None, :]).to(tl.float32).to(out_ptr.dtype.element_ty)
        b = offs // hw
        p = offs - b * hw
        ptrs = out_ptr + b[:, None] * stride_b + cs[None, :] * stride_c + p[:, None] * stride_p
        tl.store(ptrs, hot, mask=in_range[:, None] & (cs[None, :] < num_channels))

    return maskr2_one_hot_kernel


def _output_shape(labels: torch.Tensor, num_channels: int, layout: str) -> tuple[int, ...]:
    b, h, w = labels.shape
    return (b, num_channels, h, w) if layout == "nchw" else (b, h, w, num_channels)


def _check(
    labels: torch.Tensor, lut: torch.Tensor, num_channels: int, dtype: torch.dtype, layout: str
) -> None:
    if labels.dim() != 3:
        raise InputError(f"labels must be [B, H, W], got shape {tuple(labels.shape)}")
    if lut.dim() != 1 or lut.numel() == 0 or lut.dtype not in (torch.int32, torch.int64):
        raise InputError(
            f"lut must be a non-empty 1-D int32/int64 tensor, got {lut.dtype} {tuple(lut.shape)}"
        )
    if num_channels < 1:
        raise InputError(f"num_channels must be >= 1, got {num_channels}")
    if dtype not in OUT_DTYPES:
        raise InputError(f"output dtype {dtype} not supported; choose one of {OUT_DTYPES}")
    if layout not in LAYOUTS:
        raise InputError(f"layout {layout!r} not supported; choose one of {LAYOUTS}")
    if labels.device != lut.device:
        raise InputError(f"labels on {labels.device} but lut on {lut.device}")


def maskr2_one_hot_reference(
    labels: torch.Tensor,
    lut: torch.Tensor,
    num_channels: int,
    dtype: torch.dtype = torch.float32,
    layout: str = "nchw",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch reference: :func:`one_hot_from_lut` plus the layout and the unmapped flag."""
    _check(labels, lut, num_channels, dtype, layout)
    out = one_hot_from_lut(labels, lut.long(), num_channels, dtype)  # [B, C, H, W]
    # every mapped pixel has exactly one 1, so an all-zero channel vector means unmapped
    unmapped = (out.sum(dim=1) == 0).any().to(torch.int32).reshape(1)
    if layout == "nhwc":
        out = out.permute(0, 2, 3, 1).contiguous()  # [B, H, W, C]
    return out, unmapped


def maskr2_one_hot_triton(
    labels: torch.Tensor,
    lut: torch.Tensor,
    num_channels: int,
    dtype: torch.dtype = torch.float32,
    layout: str = "nchw",
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel. ``out`` (optional) is a preallocated contiguous output to fill."""
    import triton

    _check(labels, lut, num_channels, dtype, layout)
    if labels.dtype not in LABEL_DTYPES:
        raise InputError(
            f"label dtype {labels.dtype} not supported by the kernel; choose one of {LABEL_DTYPES}"
        )
    if not labels.is_contiguous() or not lut.is_contiguous():
        raise InputError("labels and lut must be contiguous")
    shape = _output_shape(labels, num_channels, layout)
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=labels.device)
    elif tuple(out.shape) != shape or out.dtype != dtype or not out.is_contiguous():
        raise InputError(
            f"out must be a contiguous {dtype} tensor of shape {shape}, got "
            f"{out.dtype} {tuple(out.shape)}"
        )
    unmapped = torch.zeros(1, dtype=torch.int32, device=labels.device)
    b, h, w = labels.shape
    n_pixels = b * h * w
    if n_pixels == 0:
        return out, unmapped
    hw = h * w
    if layout == "nchw":
        strides = (num_channels * hw, hw, 1)
    else:
        strides = (hw * num_channels, 1, num_channels)

    def grid(meta: dict[str, Any]) -> tuple[int]:
        return (triton.cdiv(n_pixels, meta["BLOCK_P"]),)

    _kernel()[grid](
        labels, lut, out, unmapped, n_pixels, hw, lut.numel(), num_channels, *strides,
        BLOCK_C=triton.next_power_of_2(num_channels),
        **launch_meta(DEFAULT_META),
    )  # fmt: skip
    return out, unmapped
