"""Building blocks of the SemanticUNet: timestep embedding, SPADE group norm, ResBlock, attention.

Follows guided-diffusion / SDM (Wang et al., "Semantic Image Synthesis via Diffusion Models"):
encoder ResBlocks use plain affine GroupNorm and never see the label map; middle and decoder
ResBlocks use SPADE group norm in both of their norms. Module names are stable and
pattern-friendly because LoRA target presets select layers by name:

- ``time_embed.0`` / ``time_embed.2``          the time MLP (``nn.Linear``)
- ``*.emb_layers.1``                           per-ResBlock embedding projection (``nn.Linear``)
- ``*.in_layers.2`` / ``*.out_layers.3``       ResBlock 3x3 convs; ``*.skip`` 1x1 skip conv
- ``*.attn.qkv`` / ``*.attn.proj_out``         attention 1x1 convs (deliberately not ``nn.Linear``)
- ``*.attn.norm``                              attention GroupNorm
- ``*.spade_in`` / ``*.spade_out``             SPADE norms: ``.shared.0``, ``.mlp_gamma``, ``.mlp_beta``

Everything here is traceable for ONNX export: no Python branches on tensor values, no ``.item()``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tte2tee_fast.kernels.ops import spade_norm_act


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in guided-diffusion.

    ``t`` is ``[B]``; returns ``[B, dim]`` laid out as ``[cos(t*f), sin(t*f)]`` with
    ``f_i = max_period ** (-i / half)``.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # [half]
    args = t.float()[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, 2*half]
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def resize_labels(cond: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Nearest-neighbour resize of the one-hot label map ``[B, C, H, W]`` to ``size`` (h, w)."""
    return F.interpolate(cond, size=tuple(size), mode="nearest")


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (output convs start as the zero map)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class SPADEGroupNorm(nn.Module):
    """``GroupNorm(affine=False)(x) * (1 + gamma(cond)) + beta(cond)`` with SDM's conv heads."""

    def __init__(self, channels: int, label_channels: int, hidden: int, num_groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels, affine=False)
        self.shared = nn.Sequential(
            nn.Conv2d(label_channels, hidden, 3, padding=1), nn.ReLU()
        )  # shared.0 is the conv
        self.mlp_gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        actv = self.shared(resize_labels(cond, x.shape[-2:]))  # [B, hidden, h, w]
        gamma, beta = self.mlp_gamma(actv), self.mlp_beta(actv)  # [B, C, h, w] each
        # fused Triton kernel on CUDA; on CPU its torch reference, i.e. spade_modulate(norm(x))
        return spade_norm_act(x, gamma, beta, self.norm.num_groups, self.norm.eps)


def _resample(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Parameter-free 2x resampling used inside up/down ResBlocks (guided-diffusion, no conv)."""
    if mode == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    if mode == "down":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    return x


class ResBlock(nn.Module):
    """guided-diffusion ResBlock with scale-shift norm; SPADE norms when ``label_channels`` > 0.

    ``resample`` is ``"none"``, ``"up"`` or ``"down"`` (2x nearest / 2x average pooling applied
    after the first norm+SiLU, on both branches). With ``label_channels == 0`` (encoder) the
    norms are plain affine GroupNorm and ``cond`` is ignored.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        *,
        label_channels: int = 0,
        spade_hidden: int = 128,
        num_groups: int = 32,
        dropout: float = 0.0,
        resample: str = "none",
    ) -> None:
        super().__init__()
        if resample not in ("none", "up", "down"):
            raise ValueError(f"resample must be none/up/down, got {resample!r}")
        self.resample = resample
        self.use_spade = label_channels > 0
        if self.use_spade:
            self.spade_in = SPADEGroupNorm(channels, label_channels, spade_hidden, num_groups)
            self.spade_out = SPADEGroupNorm(out_channels, label_channels, spade_hidden, num_groups)
            in_norm: nn.Module = nn.Identity()  # placeholder keeps the in_layers.2 index stable
            out_norm: nn.Module = nn.Identity()
        else:
            in_norm = nn.GroupNorm(num_groups, channels)
            out_norm = nn.GroupNorm(num_groups, out_channels)
        self.in_layers = nn.Sequential(
            in_norm, nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(
            out_norm,
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip = (
            nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)
        )

    def _norm_in(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.spade_in(x, cond) if self.use_spade else self.in_layers[0](x)

    def _norm_out(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.spade_out(h, cond) if self.use_spade else self.out_layers[0](h)

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        # in: norm -> SiLU -> (resample) -> conv
        h = self.in_layers[1](self._norm_in(x, cond))  # [B, C, H, W]
        h = _resample(h, self.resample)
        x = _resample(x, self.resample)
        h = self.in_layers[2](h)  # [B, C_out, H', W']
        # out: norm * (1 + scale) + shift -> SiLU -> dropout -> zero conv
        scale, shift = self.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)  # [B, C_out, 1, 1]
        h = self._norm_out(h, cond) * (1 + scale) + shift
        h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions; qkv and proj_out are 1x1 convs."""

    def __init__(self, channels: int, num_head_channels: int, num_groups: int) -> None:
        super().__init__()
        if channels % num_head_channels:
            raise ValueError(f"channels {channels} not divisible by head size {num_head_channels}")
        self.num_heads = channels // num_head_channels
        self.norm = nn.GroupNorm(num_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each [B, heads, HW, d]
        a = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, d]
        a = a.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(a)
