"""The MaskR² Triton kernel, run for real on the CPU in triton's interpreter, against the
torch reference (``remap_one_hot``'s implementation) and a guarded-memory check.

TRITON_INTERPRET handling: triton 3.9 reads it when ``@triton.jit`` decorates a function. Our
kernel is built on first launch and cached per mode (``kernels/_triton.py: lazy_kernel``), and it
calls only triton builtins, so setting the variable in a fixture works whenever triton was first
imported; ``test_interpreter_after_plain_triton_import`` checks exactly that in a fresh process.
This module does not import triton itself, so it cannot change the import order for others.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from tte2tee_fast.kernels._triton import use_triton
from tte2tee_fast.kernels.maskr2 import maskr2_one_hot_reference, maskr2_one_hot_triton
from tte2tee_fast.kernels.ops import maskr2_one_hot

from tte2tee_fast.condition.maskr2 import builtin_spec
from tte2tee_fast.errors import InputError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)

SPEC = builtin_spec("tee->tte")
C = SPEC.num_channels
SHAPE = (3, 37, 53)  # odd sizes: the last block is partial


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("TTE2TEE_TRITON", raising=False)


def _labels(dtype: torch.dtype, seed: int, invalid: bool = True) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if not invalid:
        return torch.randint(0, 6, SHAPE, generator=gen).to(dtype)
    lo, hi = (0, 256) if dtype == torch.uint8 else (-5, 12)
    x = torch.randint(0, 6, SHAPE, generator=gen)
    bad = torch.rand(SHAPE, generator=gen) < 0.1  # ~10 % out-of-range pixels
    x[bad] = torch.randint(lo, hi, SHAPE, generator=gen)[bad]
    x[0, 0, 0] = 6 if dtype == torch.uint8 else -1  # at least one unmapped pixel
    return x.to(dtype)


def _expected_flag(labels: torch.Tensor, lut: torch.Tensor) -> int:
    """Independent: some value is outside the table, or maps to no channel."""
    v = labels.numpy().astype(np.int64)
    table = lut.numpy()
    inside = (v >= 0) & (v < len(table))
    chan = np.where(inside, table[np.clip(v, 0, len(table) - 1)], -1)
    return int(((chan < 0) | (chan >= C)).any())


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int32, torch.int64])
def test_kernel_matches_reference(label_dtype, out_dtype, layout) -> None:
    seed = 7 * [torch.uint8, torch.int32, torch.int64].index(label_dtype) + len(str(out_dtype))
    labels = _labels(label_dtype, seed)
    lut = SPEC.lookup_table()
    if label_dtype == torch.int32:
        lut = lut.to(torch.int32)  # both table dtypes
    shape = (3, C, 37, 53) if layout == "nchw" else (3, 37, 53, C)
    out = torch.full(shape, float("nan"), dtype=out_dtype)  # poisoned: every element written
    got, flag = maskr2_one_hot_triton(labels, lut, C, out_dtype, layout, out=out)
    want, want_flag = maskr2_one_hot_reference(labels, lut, C, out_dtype, layout)
    assert got.data_ptr() == out.data_ptr() and got.shape == want.shape
    assert not torch.isnan(got).any()
    assert torch.equal(got, want)
    assert flag.dtype == torch.int32 and flag.item() == want_flag.item() == 1
    assert _expected_flag(labels, lut) == 1


def test_valid_map_has_no_flag_and_dispatch_widens_int16() -> None:
    labels = _labels(torch.int16, seed=3, invalid=False)
    got, flag = maskr2_one_hot(labels, SPEC.lookup_table(), C, force_triton=True)
    want, want_flag = maskr2_one_hot_reference(labels, SPEC.lookup_table(), C)
    assert torch.equal(got, want)
    assert flag.item() == want_flag.item() == 0


def test_lut_holes_are_zeroed_and_flagged() -> None:
    lut = torch.tensor([0, 2, -1, 1, 9, 3])  # value 2 unmapped, value 4 -> channel 9 >= C
    labels = torch.tensor([[[0, 1, 3, 5]], [[0, 1, 3, 5]]], dtype=torch.uint8)
    got, flag = maskr2_one_hot_triton(labels, lut, C, layout="nhwc")
    assert flag.item() == 0 and torch.equal(
        got, maskr2_one_hot_reference(labels, lut, C, layout="nhwc")[0]
    )
    labels[1, 0, 1] = 2
    labels[0, 0, 2] = 4
    got, flag = maskr2_one_hot_triton(labels, lut, C, layout="nhwc")
    assert flag.item() == 1
    assert got[1, 0, 1].sum() == 0 and got[0, 0, 2].sum() == 0
    assert torch.equal(got, maskr2_one_hot_reference(labels, lut, C, layout="nhwc")[0])


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_never_touches_memory_outside_the_tensors(layout) -> None:
    # Guard cells around the table hold a valid channel: a stray read would light it.
    lut_ref = SPEC.lookup_table()
    guard = 8
    table = torch.full((len(lut_ref) + 2 * guard,), 2, dtype=torch.int64)
    table[guard : guard + len(lut_ref)] = lut_ref
    lut = table[guard : guard + len(lut_ref)]
    labels = torch.arange(-guard, len(lut_ref) + guard).repeat(3, 1, 1)  # [3, 1, 22]
    labels = labels.repeat(1, 5, 1).contiguous()  # [3, 5, 22]
    # Guard cells around the output must keep their poison.
    n = labels.numel() * C
    buf = torch.full((n + 2 * 64,), 7.0)
    shape = (3, C, 5, 22) if layout == "nchw" else (3, 5, 22, C)
    out = buf[64 : 64 + n].view(shape)
    got, flag = maskr2_one_hot_triton(labels, lut, C, layout=layout, out=out)
    assert torch.equal(got, maskr2_one_hot_reference(labels, lut_ref, C, layout=layout)[0])
    assert flag.item() == 1
    assert torch.all(buf[:64] == 7.0) and torch.all(buf[64 + n :] == 7.0)


def test_launcher_checks() -> None:
    lut = SPEC.lookup_table()
    labels = torch.zeros(SHAPE, dtype=torch.int64)
    with pytest.raises(InputError, match="label dtype"):
        maskr2_one_hot_triton(labels.to(torch.int16), lut, C)
    with pytest.raises(InputError, match="contiguous"):
        maskr2_one_hot_triton(labels.transpose(1, 2), lut, C)
    with pytest.raises(InputError, match="layout"):
        maskr2_one_hot_triton(labels, lut, C, layout="chw")
    with pytest.raises(InputError, match="out must be"):
        maskr2_one_hot_triton(labels, lut, C, out=torch.empty(3, C, 53, 37))
    with pytest.raises(InputError, match=r"\[B, H, W\]"):
        maskr2_one_hot_triton(labels[0], lut, C)
    with pytest.raises(InputError, match="output dtype"):
        maskr2_one_hot_triton(labels, lut, C, dtype=torch.int32)
    empty, flag = maskr2_one_hot_triton(labels[:0], lut, C)
    assert empty.shape == (0, C, 37, 53) and flag.item() == 0


def test_dispatch(monkeypatch) -> None:
    cpu = torch.zeros(1, 2, 2, dtype=torch.uint8)
    assert not use_triton(cpu)  # CPU tensors: the reference, even with the interpreter on
    assert use_triton(cpu, force=True)
    monkeypatch.setenv("TTE2TEE_TRITON", "1")
    assert use_triton(cpu)
    monkeypatch.setenv("TTE2TEE_TRITON", "0")
    assert not use_triton(cpu, force=None)
    monkeypatch.delenv("TTE2TEE_TRITON")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        use_triton(cpu, force=True)
    got, flag = maskr2_one_hot(cpu, SPEC.lookup_table(), C, layout="nhwc")  # reference path
    assert got.shape == (1, 2, 2, C) and got[..., 0].all() and flag.item() == 0


def test_interpreter_after_plain_triton_import() -> None:
    """A fresh process imports triton *before* setting TRITON_INTERPRET, then runs the kernel."""
    code = textwrap.dedent(
        """
        import os, torch, triton
        os.environ["TRITON_INTERPRET"] = "1"
        from tte2tee_fast.condition.maskr2 import builtin_spec
        from tte2tee_fast.kernels.maskr2 import maskr2_one_hot_reference
        from tte2tee_fast.kernels.ops import maskr2_one_hot
        lut = builtin_spec("tee->tte").lookup_table()
        x = torch.randint(-2, 9, (2, 9, 11))
        got, flag = maskr2_one_hot(x, lut, 5, force_triton=True)
        want, want_flag = maskr2_one_hot_reference(x, lut, 5)
        assert torch.equal(got, want) and flag.item() == want_flag.item(), "mismatch"
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TTE2TEE_TRITON")}
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_compiled_kernel_on_cuda(monkeypatch, layout) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")
    labels = _labels(torch.uint8, seed=11).cuda()
    lut = SPEC.lookup_table().cuda()
    got, flag = maskr2_one_hot(labels, lut, C, torch.float16, layout)
    want, want_flag = maskr2_one_hot_reference(labels, lut, C, torch.float16, layout)
    assert torch.equal(got, want) and flag.item() == want_flag.item() == 1
