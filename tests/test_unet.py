"""SemanticUNet and its blocks against independent float64 / numpy references."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn
from tte2tee_fast.kernels.spade import spade_modulate

from tte2tee_fast.models import SemanticUNet, count_parameters, from_preset
from tte2tee_fast.models.blocks import (
    AttentionBlock,
    ResBlock,
    SPADEGroupNorm,
    resize_labels,
    timestep_embedding,
)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _randomize(model: nn.Module, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """Replace every parameter by random values (fresh models output exactly zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def _onehot(labels: torch.Tensor, channels: int = 5) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, channels).permute(0, 3, 1, 2).float()


def _blob_labels(b: int, s: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, 5, (b, s // 4, s // 4), generator=g)
        .repeat_interleave(4, 1)
        .repeat_interleave(4, 2)
    )


def _group_norm_np(x: np.ndarray, groups: int, eps: float = 1e-5) -> np.ndarray:
    b, c, h, w = x.shape
    xg = x.reshape(b, groups, -1)
    out = (xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + eps)
    return out.reshape(b, c, h, w)


def test_timestep_embedding_matches_float64_reference():
    t = torch.tensor([0.0, 1.0, 17.5, 999.0])
    dim = 16
    got = timestep_embedding(t, dim).double().numpy()
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    args = t.double().numpy()[:, None] * freqs[None]
    ref = np.concatenate([np.cos(args), np.sin(args)], axis=1)
    np.testing.assert_allclose(got, ref, atol=2e-4)


def test_spade_group_norm_matches_numpy():
    torch.manual_seed(0)
    spade = _randomize(SPADEGroupNorm(channels=8, label_channels=5, hidden=6, num_groups=4))
    x = torch.randn(2, 8, 8, 8)
    cond = _onehot(_blob_labels(2, 16, seed=1))  # 16x16 labels resized to 8x8
    got = spade(x, cond).double().numpy()

    cond_small = cond.numpy()[:, :, ::2, ::2]  # nearest 2x downsample picks even pixels

    def conv(a, m):
        return torch.nn.functional.conv2d(
            torch.from_numpy(a).double(), m.weight.double(), m.bias.double(), padding=1
        ).numpy()

    shared = np.maximum(conv(cond_small, spade.shared[0]), 0.0)
    gamma, beta = conv(shared, spade.mlp_gamma), conv(shared, spade.mlp_beta)
    ref = _group_norm_np(x.double().numpy(), 4) * (1 + gamma) + beta
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # the plain modulation function is the formula itself
    a, g_, b_ = torch.randn(3, 2, 4, 4, 4).unbind(0)
    torch.testing.assert_close(spade_modulate(a, g_, b_), a + a * g_ + b_)


def test_resize_labels_is_nearest_and_keeps_onehot():
    cond = _onehot(_blob_labels(1, 32, seed=2))
    small = resize_labels(cond, (8, 8))
    assert small.shape == (1, 5, 8, 8)
    torch.testing.assert_close(small.sum(1), torch.ones(1, 8, 8))
    torch.testing.assert_close(small, cond[:, :, ::4, ::4])


def test_attention_matches_float64_softmax_reference():
    torch.manual_seed(0)
    blk = _randomize(AttentionBlock(channels=8, num_head_channels=4, num_groups=2), scale=0.3)
    x = torch.randn(2, 8, 4, 4)
    got = blk(x).double()
    with torch.no_grad():
        hn = blk.norm(x).double()
        qkv = torch.nn.functional.conv2d(hn, blk.qkv.weight.double(), blk.qkv.bias.double())
        q, k, v = qkv.reshape(2, 3, 2, 4, 16).unbind(1)  # [B, heads, d, HW]
        w = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(4), dim=-1)
        a = torch.einsum("bhij,bhdj->bhdi", w, v).reshape(2, 8, 4, 4)
        ref = x.double() + torch.nn.functional.conv2d(
            a, blk.proj_out.weight.double(), blk.proj_out.bias.double()
        )
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("resample,size", [("none", 8), ("down", 4), ("up", 16)])
def test_resblock_resampling_shapes_and_encoder_ignores_cond(resample, size):
    enc = _randomize(ResBlock(8, 32, 16, num_groups=4, resample=resample))
    x, emb = torch.randn(2, 8, 8, 8), torch.randn(2, 32)
    out = enc(x, emb, None)
    assert out.shape == (2, 16, size, size)
    torch.testing.assert_close(enc(x, emb, torch.rand(2, 5, 8, 8)), out)
    dec = _randomize(ResBlock(8, 32, 16, label_channels=5, spade_hidden=4, num_groups=4))
    c1, c2 = _onehot(_blob_labels(2, 8, 3)), _onehot(_blob_labels(2, 8, 4))
    assert not torch.allclose(dec(x, emb, c1), dec(x, emb, c2))


def test_micro_forward_shapes_and_timestep_forms():
    model = _randomize(from_preset("micro"))
    for s in (32, 64):
        x = torch.randn(3, 1, s, s)
        cond = _onehot(_blob_labels(3, s, seed=s))
        t = torch.tensor([5, 5, 5])
        eps = model(x, t, cond)
        assert isinstance(eps, torch.Tensor) and eps.shape == (3, 1, s, s)
        assert torch.isfinite(eps).all()
        # a scalar (python or 0-d) or float timestep broadcasts to the batch
        torch.testing.assert_close(model(x, 5, cond), eps)
        torch.testing.assert_close(model(x, torch.tensor(5.0), cond), eps)
        assert not torch.allclose(model(x, 6.5, cond), eps)


def test_fresh_model_predicts_zero_like_guided_diffusion():
    # zero-initialised output conv: a fresh network predicts eps = 0 exactly
    model = from_preset("micro").eval()
    x, cond = torch.randn(2, 1, 32, 32), _onehot(_blob_labels(2, 32, 0))
    assert torch.count_nonzero(model(x, torch.tensor([1, 900]), cond)) == 0


def test_cond_reaches_decoder_but_not_encoder():
    model = _randomize(from_preset("micro"))
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 700])
    seen: list[torch.Tensor] = []
    model.input_blocks[-1].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    cond_a = _onehot(_blob_labels(2, 32, seed=5))
    cond_b = _onehot(_blob_labels(2, 32, seed=6))
    null = torch.zeros_like(cond_a)
    outs = [model(x, t, c) for c in (cond_a, cond_b, null)]
    # encoder output identical whatever the labels
    torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=0)
    torch.testing.assert_close(seen[0], seen[2], rtol=0, atol=0)
    # network output depends on the labels, and the null label is a valid distinct input
    assert not torch.allclose(outs[0], outs[1], atol=1e-4)
    assert not torch.allclose(outs[0], outs[2], atol=1e-4)
    assert torch.isfinite(outs[2]).all()


def test_tiny_forward_quick():
    model = from_preset("tiny").eval()
    assert model.config.sample_size == 128 and model.config.label_channels == 5
    with torch.no_grad():
        eps = model(torch.randn(1, 1, 128, 128), 3, torch.zeros(1, 5, 128, 128))
    assert eps.shape == (1, 1, 128, 128)


def test_bf16_autocast_close_to_fp32():
    model = _randomize(from_preset("micro"), scale=0.05)
    x, cond = torch.randn(2, 1, 32, 32), _onehot(_blob_labels(2, 32, 7))
    ref = model(x, torch.tensor([3, 400]), cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(x, torch.tensor([3, 400]), cond)
    rel = (got.float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_module_names_follow_lora_target_patterns():
    model = from_preset("micro")
    names = dict(model.named_modules())
    linear = [n for n, m in names.items() if isinstance(m, nn.Linear)]
    assert all(re.fullmatch(r"time_embed\.[02]|.*\.emb_layers\.1", n) for n in linear)
    assert "time_embed.0" in linear and "time_embed.2" in linear
    for suffix, kind in [
        ("attn.qkv", nn.Conv2d),
        ("attn.proj_out", nn.Conv2d),
        ("in_layers.2", nn.Conv2d),
        ("out_layers.3", nn.Conv2d),
        ("spade_in.shared.0", nn.Conv2d),
        ("spade_out.mlp_gamma", nn.Conv2d),
        ("spade_out.mlp_beta", nn.Conv2d),
    ]:
        hits = [m for n, m in names.items() if n.endswith(suffix)]
        assert hits and all(type(m) is kind for m in hits), suffix
    # encoder blocks carry no SPADE; every middle/decoder ResBlock does
    assert not any("spade" in n for n in names if n.startswith("input_blocks"))
    dec = [m for n, m in names.items() if isinstance(m, ResBlock) and not n.startswith("input")]
    assert dec and all(hasattr(m, "spade_in") and hasattr(m, "spade_out") for m in dec)


def test_count_parameters_kinds_add_up():
    model = from_preset("micro")
    counts = count_parameters(model)
    kinds = sum(v for k, v in counts.items() if k not in ("total", "linear_layers"))
    assert kinds == counts["total"] == sum(p.numel() for p in model.parameters())
    lin = sum(p.numel() for m in model.modules() if type(m) is nn.Linear for p in m.parameters())
    assert counts["linear"] == lin
    spade = sum(
        p.numel() for m in model.modules() if isinstance(m, SPADEGroupNorm) for p in m.parameters()
    )
    assert counts["spade"] == spade


def test_indivisible_size_is_rejected_by_shape():
    model = from_preset("micro")
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 1, 33, 33), 1, torch.zeros(1, 5, 33, 33))


def test_semantic_unet_is_a_diffusers_model():
    from diffusers import ModelMixin

    model = SemanticUNet.from_preset("micro", label_channels=6)
    assert isinstance(model, ModelMixin) and model.config.label_channels == 6


def _cosine_alpha_sigma_np(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """alpha_t, sigma_t of diffusers' squaredcos_cap_v2 with 1000 steps, in float64 numpy."""

    def f(u):
        return np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2

    i = np.arange(1000)
    abar = np.cumprod(1 - np.minimum(1 - f((i + 1) / 1000) / f(i / 1000), 0.999))
    return np.sqrt(abar[t]), np.sqrt(1 - abar[t])


def test_v_model_returns_eps_from_its_v_output():
    eps_model = _randomize(from_preset("micro"), seed=4)
    v_model = from_preset("micro", prediction_type="v").eval()
    v_model.load_state_dict(eps_model.state_dict())
    x, cond = torch.randn(3, 1, 32, 32), _onehot(_blob_labels(3, 32, seed=2))
    t = torch.tensor([0, 500, 999])
    v = eps_model(x, t, cond).double().numpy()  # same weights: the output layer's v
    a, s = _cosine_alpha_sigma_np(t.numpy())
    ref = s[:, None, None, None] * x.double().numpy() + a[:, None, None, None] * v
    got = v_model(x, t, cond)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)
    # at t = 999 (alpha 0.007) the returned eps is almost x_t: v barely moves it
    assert np.abs(got[2].numpy() - x[2].numpy()).max() < 0.05 * np.abs(v[2]).max() + 1e-3
    # the tables are not rounded by a half-precision cast of the model (fresh model: no cache)
    fresh = from_preset("micro", prediction_type="v").half()
    assert fresh._schedule_tables(torch.device("cpu"))[1].dtype == torch.float32


def test_unknown_prediction_type_is_rejected():
    with pytest.raises(ValueError, match="prediction_type 'x0'"):
        from_preset("micro", prediction_type="x0")


@pytest.mark.slow
@pytest.mark.parametrize("prediction_type", ["eps", "v"])
def test_micro_exports_to_onnx_with_dynamic_batch(tmp_path, prediction_type):
    ort = pytest.importorskip("onnxruntime")
    model = _randomize(from_preset("micro", prediction_type=prediction_type), scale=0.05)
    x, t, cond = torch.randn(2, 1, 32, 32), torch.tensor([3.0, 400.0]), torch.zeros(2, 5, 32, 32)
    path = str(tmp_path / "micro.onnx")
    with torch.enable_grad():
        torch.onnx.export(
            model,
            (x, t, cond),
            path,
            input_names=["x", "t", "cond"],
            output_names=["eps"],
            dynamic_shapes={"x": {0: "B"}, "t": {0: "B"}, "cond": {0: "B"}},
            dynamo=True,
            opset_version=18,
        )
    x3, t3 = torch.randn(3, 1, 32, 32), torch.tensor([1.0, 2.0, 999.0])  # float t, as exported
    cond3 = _onehot(_blob_labels(3, 32, seed=9))
    got = ort.InferenceSession(path).run(
        None, {"x": x3.numpy(), "t": t3.numpy(), "cond": cond3.numpy()}
    )[0]
    np.testing.assert_allclose(got, model(x3, t3, cond3).numpy(), atol=1e-4)
