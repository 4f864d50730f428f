"""The fused SPADE kernel (GroupNorm + modulation [+ emb scale-shift] [+ SiLU]) run for real in
triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py before triton's first import)
against a float64 computation written out here, and the reference against the model's own
SPADEGroupNorm, plus the custom op through ``torch.library.opcheck``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from tte2tee_fast.kernels._triton import interpreter_complete
from tte2tee_fast.kernels.ops import spade_norm_act
from tte2tee_fast.kernels.spade import spade_norm_act_reference, spade_norm_act_triton

from tte2tee_fast.errors import InputError
from tte2tee_fast.models.blocks import SPADEGroupNorm

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)
# one rounding to the output dtype: half an ulp relative, plus fp32 noise
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)}


@pytest.fixture(autouse=True)
def _no_dispatch_override(monkeypatch):
    monkeypatch.delenv("TTE2TEE_TRITON", raising=False)


def _inputs(shape, dtype, seed, mean=0.0, emb=True):
    gen = torch.Generator().manual_seed(seed)
    b, c = shape[:2]
    x = torch.randn(shape, generator=gen) * 2 + mean
    gamma, beta = torch.randn(shape, generator=gen) * 0.5, torch.randn(shape, generator=gen)
    scale = torch.randn(b, c, generator=gen) * 0.3 if emb else None
    shift = torch.randn(b, c, generator=gen) if emb else None
    cast = [t.to(dtype) if t is not None else None for t in (x, gamma, beta, scale, shift)]
    return cast


def _expected64(x, gamma, beta, groups, eps, act, scale=None, shift=None) -> torch.Tensor:
    """Independent float64 computation: biased group variance, then the modulation chain."""
    b, c, h, w = x.shape
    xg = x.double().reshape(b, groups, -1)
    mean = xg.mean(-1, keepdim=True)
    var = ((xg - mean) ** 2).mean(-1, keepdim=True)
    y = ((xg - mean) / torch.sqrt(var + eps)).reshape(b, c, h, w)
    y = y * (1 + gamma.double()) + beta.double()
    if scale is not None:
        y = y * (1 + scale.double()[:, :, None, None]) + shift.double()[:, :, None, None]
    return y * torch.sigmoid(y) if act == "silu" else y


def test_conftest_makes_the_interpreter_complete() -> None:
    """tests/conftest.py sets TRITON_INTERPRET=1 before triton's first import on CPU machines,
    so triton's reductions (tl.sum ...) run in the interpreter."""
    if torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        pytest.skip("only meaningful on a CPU-only machine with triton")
    assert interpreter_complete()


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "shape,groups,act,emb",
    [
        ((2, 48, 13, 13), 8, "silu", True),
        ((2, 48, 13, 13), 16, "none", False),
        ((1, 16, 13, 13), 2, "silu", False),  # 1352 elements a group: two blocks, one partial
    ],
)
def test_kernel_matches_float64(dtype, shape, groups, act, emb) -> None:
    x, gamma, beta, scale, shift = _inputs(shape, dtype, seed=groups + len(act))
    out = torch.full(shape, float("nan"), dtype=dtype)  # poisoned: every element written
    got = spade_norm_act_triton(x, gamma, beta, groups, 1e-5, act, scale, shift, out=out)
    assert got.data_ptr() == out.data_ptr() and not torch.isnan(got).any()
    want = _expected64(x, gamma, beta, groups, 1e-5, act, scale, shift)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)
    # the model-numerics reference rounds after every step; it agrees to a few roundings
    ref = spade_norm_act_reference(x, gamma, beta, groups, 1e-5, act, scale, shift)
    torch.testing.assert_close(ref.double(), want, rtol=8 * rtol, atol=8 * atol)


@needs_triton
def test_large_mean_keeps_fp32_statistics_accurate() -> None:
    """Mean 1000, spread 0.1: E[x²] - E[x]² in plain fp32 would lose the variance entirely."""
    gen = torch.Generator().manual_seed(3)
    x = 1000 + 0.1 * torch.randn(2, 8, 13, 13, generator=gen)
    zeros = torch.zeros_like(x)
    got = spade_norm_act_triton(x, zeros, zeros, 4)
    torch.testing.assert_close(got.double(), _expected64(x, zeros, zeros, 4, 1e-5, "none"),
                               rtol=2e-3, atol=2e-3)  # fmt: skip


@needs_triton
def test_kernel_never_touches_memory_outside_the_tensors() -> None:
    shape = (2, 12, 5, 7)
    x, gamma, beta, scale, shift = _inputs(shape, torch.float32, seed=8)

    def guarded(t: torch.Tensor, fill: float = float("nan")) -> tuple[torch.Tensor, torch.Tensor]:
        buf = torch.full((t.numel() + 128,), fill)
        view = buf[64 : 64 + t.numel()].view(t.shape)
        view.copy_(t)
        return buf, view

    views = [guarded(t)[1] for t in (x, gamma, beta, scale, shift)]
    out_buf, out = guarded(torch.zeros(shape), 7.0)
    got = spade_norm_act_triton(views[0], views[1], views[2], 3, 1e-5, "silu", *views[3:], out=out)
    want = _expected64(x, gamma, beta, 3, 1e-5, "silu", scale, shift)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    n = x.numel()
    assert torch.all(out_buf[:64] == 7.0) and torch.all(out_buf[64 + n :] == 7.0)


def test_reference_is_the_model_arithmetic() -> None:
    """SPADEGroupNorm's forward, bit for bit, with gamma / beta from its own conv heads."""
    torch.manual_seed(0)
    norm = SPADEGroupNorm(channels=32, label_channels=5, hidden=16, num_groups=8).eval()
    x = torch.randn(2, 32, 9, 9)
    cond = F.one_hot(torch.randint(0, 5, (2, 9, 9)), 5).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        actv = norm.shared(cond)
        gamma, beta = norm.mlp_gamma(actv), norm.mlp_beta(actv)
        want = norm(x, cond)
    got = spade_norm_act(x, gamma, beta, 8, norm.norm.eps)  # CPU: the reference
    assert torch.equal(got, want)
    scale, shift = torch.randn(2, 32, 1, 1), torch.randn(2, 32, 1, 1)  # ResBlock's emb chunks
    assert torch.equal(
        spade_norm_act(x, gamma, beta, 8, norm.norm.eps, "silu", scale, shift),
        F.silu(want * (1 + scale) + shift),
    )


def test_checks() -> None:
    x, gamma, beta, scale, shift = _inputs((2, 12, 5, 5), torch.float32, seed=1)
    with pytest.raises(InputError, match="num_groups 5 must divide the 12 channels"):
        spade_norm_act_reference(x, gamma, beta, 5)
    with pytest.raises(InputError, match="activation"):
        spade_norm_act_reference(x, gamma, beta, 4, act="gelu")
    with pytest.raises(InputError, match=r"gamma must match x \(2, 12, 5, 5\)"):
        spade_norm_act_reference(x, gamma[:, :6], beta, 4)
    with pytest.raises(InputError, match=r"beta is torch\.float16"):
        spade_norm_act_reference(x, gamma, beta.half(), 4)
    with pytest.raises(InputError, match="both emb_scale and emb_shift"):
        spade_norm_act_reference(x, gamma, beta, 4, emb_scale=scale)
    with pytest.raises(InputError, match=r"emb_shift must be \[2, 12\]"):
        spade_norm_act_reference(x, gamma, beta, 4, emb_scale=scale, emb_shift=shift[:1])
    with pytest.raises(InputError, match=r"x must be \[B, C, H, W\]"):
        spade_norm_act_reference(x[0], gamma[0], beta[0], 4)
    with pytest.raises(InputError, match="contiguous"):
        spade_norm_act_triton(x.transpose(2, 3), gamma, beta, 4)


def test_custom_op_opcheck_on_cpu() -> None:
    from tte2tee_fast.kernels import ops

    x, gamma, beta, scale, shift = _inputs((2, 8, 5, 3), torch.float32, seed=2)
    for args in ((scale, shift, 4, 1e-5, "silu"), (None, None, 2, 1e-6, "none")):
        torch.library.opcheck(ops.spade_norm_act_op, (x, gamma, beta, *args))
    got = torch.ops.tte2tee.spade_norm_act(x, gamma, beta, scale, shift, 4, 1e-5, "silu")
    assert torch.equal(got, spade_norm_act_reference(x, gamma, beta, 4, 1e-5, "silu", scale, shift))


@needs_triton
def test_forced_dispatch_runs_the_kernel(monkeypatch) -> None:
    x, gamma, beta, _, _ = _inputs((1, 8, 4, 4), torch.float32, seed=5, emb=False)
    monkeypatch.setenv("TTE2TEE_TRITON", "1")
    got = spade_norm_act(x, gamma, beta, 2, act="silu")
    want = _expected64(x, gamma, beta, 2, 1e-5, "silu")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    gamma.requires_grad_(True)  # autograd: the differentiable reference runs instead
    spade_norm_act(x, gamma, beta, 2).sum().backward()
    assert gamma.grad is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_compiled_kernel_on_cuda(dtype) -> None:
    ins = _inputs((4, 64, 33, 33), dtype, seed=6)
    got = spade_norm_act(
        *(t.cuda() for t in ins[:3]), 32, 1e-5, "silu", *(t.cuda() for t in ins[3:])
    )
    want = _expected64(*ins[:3], 32, 1e-5, "silu", *ins[3:])
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got.double().cpu(), want, rtol=rtol, atol=atol)
