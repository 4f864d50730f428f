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

Dispatch (``kernels/ops.py``): ``lora_linear`` runs the Triton kernel on CUDA (through the
opaque custom op ``torch.ops.tte2tee.lora_linear``) and :func:`lora_linear_reference`
elsewhere, and also when autograd needs gradients (the kernel has no backward). The model
helpers (``FusedLoRALinear``, ``fuse_adapters``, ``adapter_rows``) are in
``kernels/fused_lora.py``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tte2tee_fast.errors import InputError

from ._triton import launch_meta, lazy_kernel, maybe_autotune, require_complete_interpreter

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
