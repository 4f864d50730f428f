"""Fused multi-adapter LoRA linear as one Triton kernel, and the module / model helpers around it.

Contract (kernel and reference alike)::

    y = act(x @ W.T + b + s[a] * (x @ A[a].T) @ B[a].T)      a = adapter_index[row], per row
    x              [M, in]       fp32 / fp16 / bf16 (the public function takes [..., in])
    W              [out, in]     same dtype as x;  b [out] or None, same dtype
    A              [K, r, in]    K adapters stacked, ranks zero-padded to a common r
    B              [K, out, r]
    scales         [K]           float (alpha / r of each adapter)
    adapter_index  [M]           int32 / int64; -1 = base only
    act            "none" | "silu" | "gelu_tanh" | "gelu_erf"
    y              [M, out]      dtype of x

Numerics: every product accumulates in fp32; the rank-r intermediate ``x @ A[a].T`` stays fp32
and is expanded through B (upcast to fp32, IEEE fp32 dot) straight into the fp32 accumulator;
bias and activation are applied in fp32 and the result is rounded once. "gelu_tanh" is
``F.gelu(approximate="tanh")`` (tanh written with exp: triton has no tanh builtin), "gelu_erf"
is the exact ``F.gelu``. fp32 inputs use IEEE fp32 dots unless
``torch.backends.cuda.matmul.allow_tf32`` is set, as torch's own matmul does.

Kernel layout: one program per [BLOCK_M rows, BLOCK_N outputs] tile. It runs the base GEMM over
``in``, then loops over the adapters present in its rows only (``min``..``max`` of their valid
indices: a batch grouped by adapter touches one or two per tile); per adapter it runs the shrink
GEMM on the selected rows (the others are masked to zero at load) and one small expand dot.
Indices outside ``[-1, K)`` are treated as -1 by the kernel (never read out of bounds); the
reference and :func:`adapter_rows` reject them on the host.

Dispatch: :func:`lora_linear` runs the Triton kernel on CUDA (through the opaque custom op
``torch.ops.tte2tee.lora_linear``, see ``kernels/ops.py``) and :func:`lora_linear_reference`
elsewhere, and also when autograd needs gradients (the kernel has no backward).

Model helpers: :class:`FusedLoRALinear` replaces an ``nn.Linear`` and serves K adapters at once;
:func:`fuse_adapters` swaps them into a SemanticUNet from adapter state dicts (or
:func:`fuse_adapter_folders` from ``tte2tee adapt`` folders); the context
manager :func:`adapter_rows` sets which adapter each batch row uses. Only ``nn.Linear`` targets
(the paper's "mlp" preset: time MLP + per-ResBlock embedding projections) have a fused path;
conv targets (attention 1x1, SPADE, ResBlock convs) must be merged into the weights instead.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tte2tee_fast.errors import InputError

from ._triton import launch_meta, lazy_kernel, maybe_autotune, require_complete_interpreter
from ._triton import use_triton as _use_triton

ACTS = ("none", "silu", "gelu_tanh", "gelu_erf")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)
# Meta-parameters used under the interpreter (no autotune there); tl.dot there needs dims >= 16.
DEFAULT_META = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4}


def _configs() -> list[Any]:
    import triton

    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=nw, num_stages=ns)
        for bm, bn, bk, nw, ns in (
            (16, 64, 64, 4, 3),
            (16, 128, 64, 4, 4),
            (32, 64, 64, 4, 3),
            (32, 128, 32, 4, 4),
            (64, 64, 32, 4, 3),
            (64, 128, 32, 8, 3),
            (128, 128, 32, 8, 3),
            (128, 64, 64, 4, 4),
        )
    ]


@lazy_kernel
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @maybe_autotune(_configs(), key=["M", "N", "K_IN", "R"])
    @triton.jit
    def lora_linear_kernel(
        x_ptr,  # [M, in] contiguous
        w_ptr,  # [out, in]
        bias_ptr,  # [out] (unused without HAS_BIAS)
        a_ptr,  # [K, r, in]
        b_ptr,  # [K, out, r]
        s_ptr,  # [K] fp32 scales
        idx_ptr,  # [M] adapter of each row, -1 = base only
        y_ptr,  # [M, out]
        M,
        N,
        K_IN,
        R,
        N_ADAPTERS,
        HAS_BIAS: tl.constexpr,
        HAS_LORA: tl.constexpr,
        ACT: tl.constexpr,  # index into ACTS
        PRECISION: tl.constexpr,  # dot input precision of the x-side GEMMs
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        # tile coordinates (int64: row * in and adapter * out * r may pass 2**31)
        rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
        cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
        row_ok = rows < M
        col_ok = cols < N
        ks = tl.arange(0, BLOCK_K)
        # base GEMM: acc = x @ W.T
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K_IN, BLOCK_K):
            kk = k0 + ks
            k_ok = kk < K_IN
            x = tl.load(
                x_ptr + rows[:, None] * K_IN + kk[None, :],
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )  # [BM, BK]
            w = tl.load(
                w_ptr + cols[None, :] * K_IN + kk[:, None],
                mask=k_ok[:, None] & col_ok[None, :],
                other=0.0,
            )  # [BK, BN]
            acc = tl.dot(x, w, acc, input_precision=PRECISION)
        if HAS_LORA:
            # adapters of these rows (int64, so is the loop variable j); invalid ones = base only
            a = tl.load(idx_ptr + rows, mask=row_ok, other=-1).to(tl.int64)  # [BM]
            valid = (a >= 0) & (a < N_ADAPTERS)
            a = tl.where(valid, a, -1)
            first = tl.min(tl.where(valid, a, N_ADAPTERS), axis=0)
            last = tl.max(a, axis=0)
            rs = tl.arange(0, BLOCK_R)
            r_ok = rs < R
            for j in range(first, last + 1):
                sel = row_ok & (a == j)
                a_base = a_ptr + j * R * K_IN
                # shrink: t = x[sel] @ A[j].T in fp32 (unselected rows load as zero)
                t = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
                for k0 in range(0, K_IN, BLOCK_K):
                    kk = k0 + ks
                    k_ok = kk < K_IN
                    x = tl.load(
                        x_ptr + rows[:, None] * K_IN + kk[None, :],
                        mask=sel[:, None] & k_ok[None, :],
                        other=0.0,
                    )  # [BM, BK]
                    at = tl.load(
                        a_base + rs[None, :] * K_IN + kk[:, None],
                        mask=k_ok[:, None] & r_ok[None, :],
                        other=0.0,
                    )  # [BK, BR]
                    t = tl.dot(x, at, t, input_precision=PRECISION)
                # expand: acc += (s_j * t) @ B[j].T, fp32 throughout
                t = t * tl.load(s_ptr + j)
                bt = tl.load(
                    b_ptr + j * N * R + cols[None, :] * R + rs[:, None],
                    mask=r_ok[:, None] & col_ok[None, :],
                    other=0.0,
                ).to(tl.float32)  # [BR, BN]
                acc = tl.dot(t, bt, acc, input_precision="ieee")
        # epilogue: bias, activation, one rounding
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if ACT == 1:  # silu
            acc = acc / (1.0 + tl.exp(-acc))
        elif ACT == 2:  # gelu, tanh approximation; tanh(u) = 1 - 2 / (exp(2u) + 1)
            u = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
            acc = 0.5 * acc * (2.0 - 2.0 / (tl.exp(2.0 * u) + 1.0))
        elif ACT == 3:  # gelu, exact
            acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
        tl.store(
            y_ptr + rows[:, None] * N + cols[None, :],
            acc.to(y_ptr.dtype.element_ty),
            mask=row_ok[:, None] & col_ok[None, :],
        )

    return lora_linear_kernel


# ----------------------------------------------------------------------------- checks


def _check(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scales: torch.Tensor,
    adapter_index: torch.Tensor,
    act: str,
) -> None:
    """Shapes, dtypes and devices; ``x`` is [M, in] here."""
    if act not in ACTS:
        raise InputError(f"activation {act!r} not supported; choose one of {ACTS}")
    if x.dim() != 2:
        raise InputError(f"x must be [rows, in_features], got shape {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise InputError(f"x dtype {x.dtype} not supported; choose one of {DTYPES}")
    m, n_in = x.shape
    if weight.dim() != 2 or weight.shape[1] != n_in:
        raise InputError(f"weight must be [out, {n_in}], got shape {tuple(weight.shape)}")
    n_out = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (n_out,):
        raise InputError(f"bias must be [{n_out}], got shape {tuple(bias.shape)}")
    if lora_A.dim() != 3 or lora_A.shape[2] != n_in:
        raise InputError(f"lora_A must be [K, r, {n_in}], got shape {tuple(lora_A.shape)}")
    k, r = lora_A.shape[:2]
    if tuple(lora_B.shape) != (k, n_out, r):
        raise InputError(f"lora_B must be [{k}, {n_out}, {r}], got shape {tuple(lora_B.shape)}")
    if tuple(scales.shape) != (k,) or not scales.is_floating_point():
        raise InputError(
            f"scales must be a float [{k}] tensor, got {scales.dtype} {tuple(scales.shape)}"
        )
    if tuple(adapter_index.shape) != (m,) or adapter_index.dtype not in INDEX_DTYPES:
        raise InputError(
            f"adapter_index must be int32/int64 [{m}] (one per row), got "
            f"{adapter_index.dtype} {tuple(adapter_index.shape)}"
        )
    named = {"weight": weight, "lora_A": lora_A, "lora_B": lora_B}
    if bias is not None:
        named["bias"] = bias
    for name, t in named.items():
        if t.dtype != x.dtype:
            raise InputError(f"{name} is {t.dtype} but x is {x.dtype}: use one dtype")
    for name, t in {**named, "scales": scales, "adapter_index": adapter_index}.items():
        if t.device != x.device:
            raise InputError(f"{name} on {t.device} but x on {x.device}")


def check_adapter_index(adapter_index: torch.Tensor, num_adapters: int) -> None:
    """Host-side check that every index is -1 or an adapter (syncs if the index is on a GPU)."""
    if adapter_index.numel() and (
        int(adapter_index.min()) < -1 or int(adapter_index.max()) >= num_adapters
    ):
        bad = adapter_index[(adapter_index < -1) | (adapter_index >= num_adapters)]
        raise InputError(
            f"adapter index {int(bad[0])} out of range: use -1 (base only) or 0..{num_adapters - 1}"
        )


# ----------------------------------------------------------------------------- reference


def _activate(y: torch.Tensor, act: str) -> torch.Tensor:
    if act == "silu":
        return F.silu(y)
    if act == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    if act == "gelu_erf":
        return F.gelu(y)
    return y


def lora_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scales: torch.Tensor,
    adapter_index: torch.Tensor,
    act: str = "none",
) -> torch.Tensor:
    """Pure-torch reference, fp32 inside, one rounding to ``x.dtype``. Dense over adapters (no
    data-dependent shapes, no host sync): cost K small GEMMs, fine for the handful served."""
    _check(x, weight, bias, lora_A, lora_B, scales, adapter_index, act)
    tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
    if adapter_index.device.type == "cpu" and not tracing:  # free on the host; no graph breaks
        check_adapter_index(adapter_index, lora_A.shape[0])
    xf = x.float()  # [M, in]
    y = xf @ weight.float().T  # [M, out]
    if bias is not None:
        y = y + bias.float()
    if lora_A.shape[0] and lora_A.shape[1]:
        onehot = (
            adapter_index.long()[None, :] == torch.arange(lora_A.shape[0], device=x.device)[:, None]
        )  # [K, M]
        t = torch.einsum("mi,kri->kmr", xf, lora_A.float())  # [K, M, r] fp32 intermediate
        t = t * (onehot.float() * scales.float()[:, None])[..., None]
        y = y + torch.einsum("kmr,kor->mo", t, lora_B.float())
    return _activate(y, act).to(x.dtype)


# ----------------------------------------------------------------------------- launcher


def lora_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scales: torch.Tensor,
    adapter_index: torch.Tensor,
    act: str = "none",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the kernel on [M, in] inputs. ``out`` (optional) is a preallocated contiguous
    [M, out] tensor of x's dtype to fill."""
    import triton

    _check(x, weight, bias, lora_A, lora_B, scales, adapter_index, act)
    tensors = {"x": x, "weight": weight, "lora_A": lora_A, "lora_B": lora_B}
    tensors.update(scales=scales, adapter_index=adapter_index)
    if bias is not None:
        tensors["bias"] = bias
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise InputError(f"{name} must be contiguous")
    require_complete_interpreter("lora_linear")
    m, n_in = x.shape
    n_out = weight.shape[0]
    k, r = lora_A.shape[:2]
    if out is None:
        out = torch.empty((m, n_out), dtype=x.dtype, device=x.device)
    elif tuple(out.shape) != (m, n_out) or out.dtype != x.dtype or not out.is_contiguous():
        raise InputError(
            f"out must be a contiguous {x.dtype} tensor of shape {(m, n_out)}, got "
            f"{out.dtype} {tuple(out.shape)}"
        )
    if m == 0 or n_out == 0:
        return out
    tf32 = x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n_out, meta["BLOCK_N"]))

    _kernel()[grid](
        x, weight, bias if bias is not None else x, lora_A, lora_B,
        scales.to(torch.float32), adapter_index, out,
        m, n_out, n_in, r, k,
        HAS_BIAS=bias is not None,
        HAS_LORA=k > 0 and r > 0,
        ACT=ACTS.index(act),
        PRECISION="tf32" if tf32 or x.dtype != torch.float32 else "ieee",
        BLOCK_R=max(16, triton.next_power_of_2(max(r, 1))),
        **launch_meta(DEFAULT_META),
    )  # fmt: skip
    return out


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
    autograd needs gradients; ``force_triton`` as in ``kernels/_triton.py``."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # [M, in]
    args = (weight, bias, lora_A, lora_B, scales, adapter_index)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *args))
    if not grad and _use_triton(x, weight, force=force_triton):
        if x.is_cuda:
            from . import ops

            y = ops.lora_linear_op(x2.contiguous(), *(_contig(t) for t in args), act)
        else:  # the interpreter (tests)
            y = lora_linear_triton(x2.contiguous(), *(_contig(t) for t in args), act)
    else:
        y = lora_linear_reference(x2, *args, act)
    return y.reshape(*lead, weight.shape[0])


def _contig(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


# ----------------------------------------------------------------------------- module


class FusedLoRALinear(nn.Module):
    """``nn.Linear`` plus K LoRA adapters, one chosen per row by ``self.adapter_index``.

    ``weight`` / ``bias`` are the base Linear's own parameters (so the model's state dict is
    unchanged); the stacked adapters are non-persistent buffers ``lora_A [K, r, in]``,
    ``lora_B [K, out, r]``, ``lora_scales [K]``. Set the index with :func:`adapter_rows`, or
    assign ``adapter_index`` ([rows] int tensor, -1 = base only) directly. Rows: an index as
    long as the flattened leading dims is used as is; an index of length ``x.shape[0]`` with a
    >2-D ``x`` is repeated over the inner dims; a 2-D ``x`` with a multiple of its length rows
    (classifier-free guidance runs ``cat([x, x])``) gets it tiled.
    """

    def __init__(
        self,
        weight: nn.Parameter,
        bias: nn.Parameter | None,
        lora_A: torch.Tensor,
        lora_B: torch.Tensor,
        scales: torch.Tensor,
        act: str = "none",
    ) -> None:
        super().__init__()
        if act not in ACTS:
            raise InputError(f"activation {act!r} not supported; choose one of {ACTS}")
        self.weight = weight
        self.bias = bias
        self.register_buffer("lora_A", lora_A.to(weight.dtype).contiguous(), persistent=False)
        self.register_buffer("lora_B", lora_B.to(weight.dtype).contiguous(), persistent=False)
        self.register_buffer("lora_scales", scales.float(), persistent=False)
        self.act = act
        self.adapter_index: torch.Tensor | None = None

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def num_adapters(self) -> int:
        return self.lora_A.shape[0]

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        adapters: Sequence[tuple[torch.Tensor, torch.Tensor, float] | None],
        act: str = "none",
    ) -> FusedLoRALinear:
        """Wrap ``linear`` with ``adapters`` = [(A [r_i, in], B [out, r_i], scale_i) or None
        for an adapter that leaves this layer alone]; ranks are zero-padded to the largest."""
        n_out, n_in = linear.weight.shape
        r = 0
        for i, ad in enumerate(adapters):
            if ad is None:
                continue
            a, b, _ = ad
            if a.dim() != 2 or a.shape[1] != n_in or b.dim() != 2 or b.shape != (n_out, a.shape[0]):
                raise InputError(
                    f"adapter {i}: A must be [r, {n_in}] and B [{n_out}, r], got "
                    f"{tuple(a.shape)} and {tuple(b.shape)}"
                )
            r = max(r, a.shape[0])
        k = len(adapters)
        like = {"dtype": torch.float32, "device": linear.weight.device}
        lora_A = torch.zeros(k, r, n_in, **like)  # [K, r, in]
        lora_B = torch.zeros(k, n_out, r, **like)  # [K, out, r]
        scales = torch.zeros(k, **like)
        for i, ad in enumerate(adapters):
            if ad is not None:
                a, b, s = ad
                lora_A[i, : a.shape[0]] = a.float()
                lora_B[i, :, : a.shape[0]] = b.float()
                scales[i] = float(s)
        return cls(linear.weight, linear.bias, lora_A, lora_B, scales, act)

    def _row_index(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.adapter_index
        if idx is None:
            raise InputError(
                "FusedLoRALinear has no adapter index: run the model inside "
                "`with adapter_rows(model, index):` (index -1 = base only)"
            )
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        n = idx.numel()
        if n == rows:
            return idx
        if x.dim() > 2 and n == x.shape[0]:
            return idx.repeat_interleave(rows // n)
        if x.dim() == 2 and n and rows % n == 0:
            return idx.repeat(rows // n)
        raise InputError(f"adapter index has {n} entries but the input has {rows} rows")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self._row_index(x).to(x.device)
        return lora_linear(
            x.to(self.weight.dtype),
            self.weight,
            self.bias,
            self.lora_A,
            self.lora_B,
            self.lora_scales,
            idx,
            self.act,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"adapters={self.num_adapters}, rank={self.lora_A.shape[1]}, act={self.act}"
        )


# ----------------------------------------------------------------------------- model helpers

# peft keys: "[base_model.model.]<module>.lora_A[.<adapter name>].weight"
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<mod>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def _parse_adapter(state: Mapping[str, Any], which: int) -> dict[str, dict[str, Any]]:
    """``{module name: {"A": tensor, "B": tensor}}`` from one adapter: a peft state dict, or
    ``{module name: (A, B)}`` as ``tte2tee_fast.adapt.adapter.Adapter.weights`` holds it."""
    if state and all(isinstance(v, tuple) for v in state.values()):
        return {mod: {"A": ab[0], "B": ab[1]} for mod, ab in state.items()}
    found: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        match = _KEY.match(key)
        if match is None:
            raise InputError(
                f"adapter {which}: key {key!r} is not a LoRA A/B weight (only plain LoRA on "
                "Linear layers can be fused: no DoRA magnitudes, embeddings or biases)"
            )
        found.setdefault(match["mod"], {})[match["ab"]] = value
    for mod, ab in found.items():
        if set(ab) != {"A", "B"}:
            raise InputError(f"adapter {which}: module {mod!r} has lora_{next(iter(ab))} only")
    return found


def fuse_adapters(
    model: nn.Module,
    adapter_state_dicts: Sequence[Mapping[str, Any]],
    scales: Sequence[float] | float,
) -> list[str]:
    """Replace every ``nn.Linear`` that some adapter targets by a :class:`FusedLoRALinear`
    serving all adapters (adapter i = ``adapter_state_dicts[i]``, scale ``scales[i]`` =
    alpha / r); in place, returns the replaced module names. Keys follow peft
    (``time_embed.0.lora_A.weight``, optional ``base_model.model.`` prefix and adapter name);
    ``{module: (A, B)}`` mappings are taken too.
    A target that is not an ``nn.Linear`` (a conv: the "attn", "conv", "spade" presets) is
    rejected: merge such adapters into the base weights instead."""
    k = len(adapter_state_dicts)
    if k == 0:
        raise InputError("fuse_adapters needs at least one adapter state dict")
    scale_list = [float(scales)] * k if isinstance(scales, (int, float)) else list(scales)
    if len(scale_list) != k:
        raise InputError(f"{k} adapters but {len(scale_list)} scales")
    parsed = [_parse_adapter(sd, i) for i, sd in enumerate(adapter_state_dicts)]
    targets = sorted({name for p in parsed for name in p})
    modules = dict(model.named_modules())
    for name in targets:
        mod = modules.get(name)
        if mod is None:
            raise InputError(f"adapter targets module {name!r}, which the model does not have")
        if isinstance(mod, FusedLoRALinear):
            raise InputError(f"module {name!r} already carries fused adapters")
        if type(mod) is not nn.Linear:
            raise InputError(
                f"adapter targets {name!r}, a {type(mod).__name__}: the fused path supports "
                "nn.Linear targets only (the 'mlp' preset); merge conv adapters instead"
            )
    for name in targets:
        linear = modules[name]
        adapters = [
            (p[name]["A"], p[name]["B"], scale_list[i]) if name in p else None
            for i, p in enumerate(parsed)
        ]
        fused = FusedLoRALinear.from_linear(linear, adapters)
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, fused)
    return targets


def fuse_adapter_folders(model: nn.Module, adapter_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """:func:`fuse_adapters` from adapter folders (``tte2tee adapt`` output): each is read and
    checked against ``model`` (base hash, targets, shapes) first, and used at its own scale
    (alpha / r). Adapter i of the folders is index i in :func:`adapter_rows`."""
    from tte2tee_fast.adapt.adapter import check_base, read_adapter

    adapters = [read_adapter(d) for d in adapter_dirs]
    for adapter in adapters:
        check_base(model, adapter)
    return fuse_adapters(model, [a.weights for a in adapters], [a.scaling for a in adapters])


@contextlib.contextmanager
def adapter_rows(
    model: nn.Module, adapter_index: torch.Tensor | Sequence[int]
) -> Iterator[torch.Tensor]:
    """Set the adapter of every batch row (-1 = base only) on every :class:`FusedLoRALinear`
    of ``model`` for the calls inside the block; restores the previous index on exit."""
    fused = [m for m in model.modules() if isinstance(m, FusedLoRALinear)]
    if not fused:
        raise InputError("the model has no fused adapters: call fuse_adapters(model, ...) first")
    idx = torch.as_tensor(adapter_index).reshape(-1)
    if idx.is_floating_point() or idx.dtype == torch.bool:
        raise InputError(f"adapter index must hold integers, got {idx.dtype}")
    idx = idx.to(torch.int64)
    check_adapter_index(idx.cpu(), fused[0].num_adapters)
    on_device: dict[torch.device, torch.Tensor] = {}
    previous = [m.adapter_index for m in fused]
    try:
        for m in fused:
            dev = m.weight.device
            if dev not in on_device:
                on_device[dev] = idx.to(dev, non_blocking=True)
            m.adapter_index = on_device[dev]
        yield idx
    finally:
        for m, prev in zip(fused, previous, strict=True):
            m.adapter_index = prev
