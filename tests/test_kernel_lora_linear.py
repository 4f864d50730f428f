"""The fused multi-adapter LoRA linear: the Triton kernel run for real in triton's interpreter
(TRITON_INTERPRET=1, set by tests/conftest.py before triton's first import) against a float64
per-row merged-weight computation, the module / model helpers against per-adapter merged
SemanticUNets and against peft itself, and the custom op through ``torch.library.opcheck``.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from helpers import randomise_zero_params
from torch import nn
from tte2tee_fast.kernels.fused_lora import FusedLoRALinear, adapter_rows, fuse_adapters
from tte2tee_fast.kernels.lora_linear import lora_linear_reference, lora_linear_triton
from tte2tee_fast.kernels.ops import lora_linear

from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.multi_adapter import fuse_adapter_folders
from tte2tee_fast.models import SemanticUNet

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)
ROWS, IN, OUT, K = 37, 70, 45, 3  # odd sizes: every tile is partial somewhere
ACT64 = {
    "none": lambda y: y,
    "silu": F.silu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "gelu_erf": F.gelu,
}
TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2e-3)}  # (rtol, atol)


@pytest.fixture(autouse=True)
def _no_dispatch_override(monkeypatch):
    monkeypatch.delenv("TTE2TEE_TRITON", raising=False)


def _problem(dtype: torch.dtype, rank: int, seed: int, k: int = K, rows: int = ROWS):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    x = rnd(rows, IN)
    w, b = rnd(OUT, IN, scale=IN**-0.5), rnd(OUT, scale=0.5)
    lora_a, lora_b = rnd(k, rank, IN, scale=IN**-0.5), rnd(k, OUT, rank, scale=0.5)
    scales = torch.rand(k, generator=gen) + 0.5
    idx = torch.randint(-1, k, (rows,), generator=gen)
    idx[:4] = torch.tensor([-1, 0, k - 1, -1])  # both kinds present whatever the seed
    return x, w, b, lora_a, lora_b, scales, idx


def _merged64(x, w, b, lora_a, lora_b, scales, idx, act="none") -> torch.Tensor:
    """Independent: each row through its own merged Linear W + s * B @ A, in float64."""
    out = []
    for row, a in zip(x.double(), idx.tolist(), strict=True):
        weight = w.double()
        if a >= 0:
            weight = weight + scales[a].double() * lora_b[a].double() @ lora_a[a].double()
        out.append(F.linear(row, weight, b.double() if b is not None else None))
    return ACT64[act](torch.stack(out))


# ----------------------------------------------------------------------------- kernel


@needs_triton
@pytest.mark.parametrize("rank", [1, 3, 8])
@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float16,
        pytest.param(
            torch.bfloat16,
            marks=pytest.mark.skip(
                reason="triton 3.9's interpreter returns garbage from tl.dot on bf16 operands "
                "(a bare 16x16 bf16 dot is off by ~1e10); the bf16 path runs on GPUs only"
            ),
        ),
    ],
)
def test_kernel_matches_merged_rows(dtype, rank) -> None:
    act = ["none", "silu", "gelu_tanh", "gelu_erf"][rank % 4]
    x, w, b, lora_a, lora_b, s, idx = _problem(dtype, rank, seed=rank)
    poisoned = torch.full((ROWS, OUT), float("nan"), dtype=dtype)
    got = lora_linear_triton(x, w, b, lora_a, lora_b, s, idx.to(torch.int32), act, out=poisoned)
    assert got.data_ptr() == poisoned.data_ptr() and not torch.isnan(got).any()
    rtol, atol = TOL[dtype]
    want = _merged64(x, w, b, lora_a, lora_b, s, idx, act)
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)
    # rows without an adapter are the base Linear's output
    base = ACT64[act](F.linear(x.double(), w.double(), b.double()))
    torch.testing.assert_close(got[idx < 0].double(), base[idx < 0], rtol=rtol, atol=atol)
    # the adapters make a difference well above the tolerance (the test can fail)
    assert (got[idx >= 0].double() - base[idx >= 0]).abs().max() > 50 * atol
    # and the pure-torch reference agrees with both
    ref = lora_linear_reference(x, w, b, lora_a, lora_b, s, idx, act)
    torch.testing.assert_close(ref.double(), want, rtol=rtol, atol=atol)


@needs_triton
def test_kernel_never_touches_memory_outside_the_tensors() -> None:
    """Every input sits inside NaN guard cells (a stray read would poison the output) and the
    output inside 7.0 guard cells (a stray write would change them). Out-of-range indices
    (K, -2) count as base only, without reading past A / B."""
    x, w, b, lora_a, lora_b, s, idx = _problem(torch.float32, 3, seed=11)
    idx[5], idx[6] = K, -2

    def guarded(t: torch.Tensor, fill: float = float("nan")) -> tuple[torch.Tensor, torch.Tensor]:
        buf = torch.full((t.numel() + 128,), fill)
        view = buf[64 : 64 + t.numel()].view(t.shape)
        view.copy_(t)
        return buf, view

    views = [guarded(t)[1] for t in (x, w, b, lora_a, lora_b, s)]
    out_buf, out = guarded(torch.zeros(ROWS, OUT), 7.0)
    got = lora_linear_triton(*views, idx, "none", out=out)
    want_idx = idx.clone()
    want_idx[5:7] = -1
    torch.testing.assert_close(
        got.double(), _merged64(x, w, b, lora_a, lora_b, s, want_idx), rtol=2e-5, atol=2e-5
    )
    assert torch.all(out_buf[:64] == 7.0) and torch.all(out_buf[64 + ROWS * OUT :] == 7.0)


@needs_triton
def test_kernel_without_adapters_or_bias_is_the_base_linear() -> None:
    x, w, _, _, _, _, _ = _problem(torch.float32, 1, seed=5)
    idx = torch.zeros(ROWS, dtype=torch.int64)
    empty_a, empty_b = torch.zeros(0, 4, IN), torch.zeros(0, OUT, 4)
    got = lora_linear_triton(x, w, None, empty_a, empty_b, torch.zeros(0), idx - 1)
    torch.testing.assert_close(got, F.linear(x, w), rtol=1e-5, atol=1e-5)
    rank0 = lora_linear_triton(x, w, None, torch.zeros(2, 0, IN), torch.zeros(2, OUT, 0),
                               torch.ones(2), idx)  # fmt: skip
    torch.testing.assert_close(rank0, F.linear(x, w), rtol=1e-5, atol=1e-5)
    assert lora_linear_triton(x[:0], w, None, empty_a, empty_b, torch.zeros(0), idx[:0]).shape == (
        0,
        OUT,
    )


def test_checks() -> None:
    x, w, b, lora_a, lora_b, s, idx = _problem(torch.float32, 2, seed=1)
    bad = {
        "activation": dict(act="relu"),
        r"x must be \[rows": dict(x=x[None]),
        r"weight must be \[out, 70\]": dict(w=w[:, :3]),
        r"bias must be \[45\]": dict(b=b[:3]),
        r"lora_A must be \[K, r, 70\]": dict(lora_a=lora_a[0]),
        r"lora_B must be \[3, 45, 2\]": dict(lora_b=lora_b[:, :, :1]),
        "scales must be": dict(s=s[:2]),
        "adapter_index must be": dict(idx=idx.float()),
        "weight is torch.float16": dict(w=w.half()),
    }
    for message, change in bad.items():
        args = dict(x=x, w=w, b=b, lora_a=lora_a, lora_b=lora_b, s=s, idx=idx, act="none")
        args.update(change)
        with pytest.raises(InputError, match=message):
            lora_linear_reference(*args.values())
    with pytest.raises(InputError, match="adapter index 3 out of range"):
        lora_linear_reference(x, w, b, lora_a, lora_b, s, torch.full_like(idx, K))
    with pytest.raises(InputError, match="lora_A must be contiguous"):
        lora_linear_triton(x, w, b, lora_a.transpose(0, 1).contiguous().transpose(0, 1), lora_b,
                           s, idx)  # fmt: skip


# ----------------------------------------------------------------------------- module


def _adapter(rank: int, n_in: int, n_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rank, n_in, generator=gen) * 0.3, torch.randn(n_out, rank, generator=gen)


@pytest.mark.parametrize("triton_path", [False, pytest.param(True, marks=needs_triton)])
def test_fused_module_pads_ranks_and_matches_merged_rows(monkeypatch, triton_path) -> None:
    linear = nn.Linear(IN, OUT)
    adapters = [(*_adapter(1, IN, OUT, 1), 2.0), None, (*_adapter(4, IN, OUT, 2), 0.25)]
    fused = FusedLoRALinear.from_linear(linear, adapters, act="silu")
    assert fused.lora_A.shape == (3, 4, IN) and fused.lora_B.shape == (3, OUT, 4)
    assert set(fused.state_dict()) == {"weight", "bias"}  # adapters are not saved with the model
    if triton_path:
        monkeypatch.setenv("TTE2TEE_TRITON", "1")
    x = torch.randn(2, 5, IN)
    fused.adapter_index = torch.tensor([2, 0])  # per sample, repeated over the 5 inner rows
    with torch.no_grad():
        got = fused(x)
    for i, a in enumerate([2, 0]):
        a_, b_, s_ = adapters[a]
        torch.testing.assert_close(
            got[i], F.silu(F.linear(x[i], linear.weight + s_ * b_ @ a_, linear.bias)),
            rtol=1e-5, atol=1e-5,
        )  # fmt: skip
    fused.adapter_index = torch.tensor([1, -1])  # adapter 1 leaves the layer alone
    with torch.no_grad():
        torch.testing.assert_close(fused(x), F.silu(linear(x)), rtol=1e-5, atol=1e-5)
    x2 = x[:, 0].repeat(2, 1)  # classifier-free guidance: cat([x, x]), index tiled
    fused.adapter_index = torch.tensor([2, 0])
    with torch.no_grad():
        torch.testing.assert_close(fused(x2)[2:], got[:, 0], rtol=1e-6, atol=1e-6)
    fused.adapter_index = torch.tensor([0, 1, 2])
    with pytest.raises(InputError, match="3 entries but the input has 10 rows"):
        fused(x)


def test_fused_module_trains_through_the_reference() -> None:
    linear = nn.Linear(8, 6)
    fused = FusedLoRALinear.from_linear(linear, [(*_adapter(2, 8, 6, 3), 1.0)])
    fused.adapter_index = torch.tensor([0, -1, 0])
    fused(torch.randn(3, 8)).square().sum().backward()
    assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) is nn.Linear]


def test_fused_micro_unet_rows_equal_per_adapter_merged_models() -> None:
    torch.manual_seed(0)
    model = SemanticUNet.from_preset("micro").eval()
    randomise_zero_params(model, generator=torch.Generator().manual_seed(1))
    names = _linear_names(model)
    assert "time_embed.0" in names and any(n.endswith("emb_layers.1") for n in names)
    linears = dict(model.named_modules())
    ranks, scales = (2, 1), (0.5, 2.0)
    state_dicts = []
    for i, rank in enumerate(ranks):
        sd = {}
        for j, name in enumerate(names[: len(names) - i]):  # adapter 1 skips the last layer
            n_out, n_in = linears[name].weight.shape
            a, b = _adapter(rank, n_in, n_out, seed=100 * i + j)
            sd[f"base_model.model.{name}.lora_A.weight"] = a
            sd[f"base_model.model.{name}.lora_B.weight"] = b * 0.1
        state_dicts.append(sd)
    # per-adapter merged models: W + s * B @ A
    merged = []
    for sd, s in zip(state_dicts, scales, strict=True):
        m = copy.deepcopy(model)
        mods = dict(m.named_modules())
        with torch.no_grad():
            for key, a in sd.items():
                if ".lora_A." in key:
                    name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                    b = sd[key.replace("lora_A", "lora_B")]
                    mods[name].weight += s * b @ a
        merged.append(m)
    fused_names = fuse_adapters(model, state_dicts, scales)
    assert fused_names == sorted(names)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1, 32, 32, generator=gen)
    t = torch.tensor([10.0, 500.0, 900.0, 250.0])
    cond = F.one_hot(torch.randint(0, 5, (4, 32, 32), generator=gen), 5).permute(0, 3, 1, 2)
    index = [1, 0, -1, 1]
    with torch.no_grad(), adapter_rows(model, index):
        got = model(x, t, cond.float())
        base = copy.deepcopy(merged[0])
        base.load_state_dict(model.state_dict())  # the fused model's state dict is the base one
        refs = {a: (merged[a] if a >= 0 else base)(x, t, cond.float()) for a in (-1, 0, 1)}
    for row, a in enumerate(index):
        want = refs[a][row]
        assert (got[row] - want).abs().max() <= 1e-4 * want.abs().max()
    assert (refs[0] - refs[1]).abs().max() > 1e-2 * refs[0].abs().max()  # adapters matter
    assert all(m.adapter_index is None for m in model.modules() if isinstance(m, FusedLoRALinear))


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")
def test_fuse_adapter_folders_matches_peft(tmp_path) -> None:
    """Adapters trained through peft and written by ``save_adapter`` (the ``tte2tee adapt``
    format), fused at their own alpha / r, against peft's own unmerged forward."""
    from tte2tee_fast.adapt.adapter import save_adapter
    from tte2tee_fast.adapt.targets import lora_config
    from tte2tee_fast.condition.maskr2 import builtin_spec
    from tte2tee_fast.models import model_hash

    torch.manual_seed(3)
    model = SemanticUNet.from_preset("micro").eval()
    randomise_zero_params(model, generator=torch.Generator().manual_seed(4))
    plain = copy.deepcopy(model)
    base_hash = model_hash(model)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([3.0, 700.0])
    cond = torch.zeros(2, 5, 32, 32)
    configs = {"a0": lora_config(model, "mlp", 1, 4.0), "a1": lora_config(model, "mlp", 3, 3.0)}
    for name, config in configs.items():
        model.add_adapter(config, name)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.1)
    want = {}
    for name in ("a0", "a1"):
        model.set_adapter(name)
        with torch.no_grad():
            want[name] = model(x, t, cond)
        save_adapter(model, base_hash, builtin_spec("tee->tte"), "mlp", tmp_path / name, name)
    fuse_adapter_folders(plain, [tmp_path / "a0", tmp_path / "a1"])
    with torch.no_grad(), adapter_rows(plain, [1, 0]):
        got = plain(x, t, cond)
    torch.testing.assert_close(got[0], want["a1"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], want["a0"][1], rtol=1e-4, atol=1e-5)
    assert (want["a0"] - want["a1"]).abs().max() > 1e-3


def test_model_helpers_reject_bad_input() -> None:
    model = SemanticUNet.from_preset("micro")
    conv = {"middle_block.0.attn.qkv.lora_A.weight": torch.zeros(1, 32, 1, 1),
            "middle_block.0.attn.qkv.lora_B.weight": torch.zeros(96, 1, 1, 1)}  # fmt: skip
    with pytest.raises(
        InputError, match=r"Conv2d: the fused path supports nn\.Linear targets only"
    ):
        fuse_adapters(model, [conv], 1.0)
    with pytest.raises(InputError, match="has lora_A only"):
        fuse_adapters(model, [{"time_embed.0.lora_A.weight": torch.zeros(1, 16)}], 1.0)
    with pytest.raises(InputError, match="not a LoRA A/B weight"):
        fuse_adapters(model, [{"time_embed.0.lora_magnitude_vector": torch.zeros(64)}], 1.0)
    with pytest.raises(InputError, match="does not have"):
        fuse_adapters(model, [{"nope.lora_A.weight": torch.zeros(1, 2),
                               "nope.lora_B.weight": torch.zeros(2, 1)}], 1.0)  # fmt: skip
    with pytest.raises(InputError, match="2 adapters but 1 scales"):
        fuse_adapters(model, [{}, {}], [1.0])
    with pytest.raises(InputError, match="no fused adapters"):
        adapter_rows(model, [0]).__enter__()
    sd = {"time_embed.0.lora_A.weight": torch.zeros(1, 16),
          "time_embed.0.lora_B.weight": torch.zeros(64, 1)}  # fmt: skip
    assert fuse_adapters(model, [sd], 1.0) == ["time_embed.0"]
    with pytest.raises(InputError, match="adapter index 1 out of range"):
        adapter_rows(model, [0, 1]).__enter__()
    with pytest.raises(InputError, match="no adapter index"):
        model(torch.zeros(1, 1, 32, 32), 1, torch.zeros(1, 5, 32, 32))


# ----------------------------------------------------------------------------- custom op


def test_custom_op_opcheck_on_cpu() -> None:
    from tte2tee_fast.kernels import ops

    x, w, b, lora_a, lora_b, s, idx = _problem(torch.float32, 3, seed=9, rows=6)
    for bias, act in ((b, "silu"), (None, "none")):
        torch.library.opcheck(ops.lora_linear_op, (x, w, bias, lora_a, lora_b, s, idx, act))
    got = torch.ops.tte2tee.lora_linear(x, w, b, lora_a, lora_b, s, idx, "gelu_erf")
    torch.testing.assert_close(
        got, lora_linear_reference(x, w, b, lora_a, lora_b, s, idx, "gelu_erf")
    )


def test_public_function_dispatch_on_cpu() -> None:
    x, w, b, lora_a, lora_b, s, idx = _problem(torch.float32, 2, seed=4)
    got = lora_linear(x.reshape(1, ROWS, IN), w, b, lora_a, lora_b, s, idx)  # leading dims kept
    assert got.shape == (1, ROWS, OUT)
    torch.testing.assert_close(got[0], lora_linear_reference(x, w, b, lora_a, lora_b, s, idx))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_compiled_kernel_on_cuda(dtype) -> None:
    x, w, b, lora_a, lora_b, s, idx = (t.cuda() for t in _problem(dtype, 8, seed=12, rows=300))
    got = lora_linear(x, w, b, lora_a, lora_b, s, idx, "gelu_tanh")
    want = _merged64(*(t.cpu() for t in (x, w, b, lora_a, lora_b, s, idx)), act="gelu_tanh")
    tol = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        tol = 5e-3
    torch.testing.assert_close(got.double().cpu(), want, rtol=tol, atol=tol)
