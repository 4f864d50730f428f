"""SemanticUNet: the SDM-style mask-conditioned diffusion network (SPADE in middle and decoder).

Layout (guided-diffusion naming, with every stage a :class:`Stage` of ``res`` [+ ``attn``]
[+ ``up``]):

- ``conv_in``                 3x3 conv, image -> ``model_channels``
- ``time_embed``              Linear - SiLU - Linear on the sinusoidal timestep embedding
- ``input_blocks.i``          encoder: per level ``num_res_blocks`` stages, then one stage whose
                              ``res`` is a downsampling ResBlock (all levels but the last);
                              plain GroupNorm, the label map is never seen here
- ``middle_block.0/1``        SPADE ResBlock + attention, SPADE ResBlock
- ``output_blocks.i``         decoder: per level ``num_res_blocks + 1`` SPADE stages fed with the
                              matching encoder skip; the last stage of each level but the top one
                              carries an upsampling ResBlock ``up``
- ``out``                     GroupNorm - SiLU - zero-init 3x3 conv -> eps (or v, see below)

Output parameterization (``prediction_type``): the forward always returns eps, so every sampler,
exporter and kernel sees one contract. With ``"eps"`` the last conv predicts eps itself. With
``"v"`` it predicts ``v = alpha_t eps - sigma_t x0`` (Salimans & Ho 2022) on the cosine
1000-step schedule of training, and the forward returns ``eps = sigma_t x_t + alpha_t v``
(this identity follows from ``alpha^2 + sigma^2 = 1``). The clean-image estimate
``(x_t - sigma eps) / alpha`` then equals ``alpha x_t - sigma v``: bounded at high noise, where an
eps-network's estimate is its eps error / alpha (x 140 at t = 999), which is what spreads the
global brightness of an eps-model's frames.

``attention_resolutions`` are feature-map sizes in pixels *at* ``sample_size`` (SDM's "32,16,8"
at 256); they are converted to downsampling factors, so a model trained at 128 and run at 256
keeps attention at the same depth of the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.loaders.peft import PeftAdapterMixin
from torch import nn

from tte2tee_fast.models.blocks import (
    AttentionBlock,
    ResBlock,
    SPADEGroupNorm,
    timestep_embedding,
    zero_module,
)

PREDICTION_TYPES = ("eps", "v")  # what the last conv predicts; forward always returns eps


class Stage(nn.Module):
    """One step of the U-Net: a ResBlock, optionally attention, optionally an up ResBlock."""

    def __init__(
        self, res: ResBlock, attn: AttentionBlock | None = None, up: ResBlock | None = None
    ):
        super().__init__()
        self.res = res
        self.attn = attn
        self.up = up

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.res(x, emb, cond)
        if self.attn is not None:
            h = self.attn(h)
        if self.up is not None:
            h = self.up(h, emb, cond)
        return h


class SemanticUNet(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Mask-conditioned eps-prediction U-Net: ``forward(x, t, cond) -> eps``.

    ``x``: ``[B, in_channels, H, W]`` noisy image; ``t``: ``[B]`` or scalar timesteps (int or
    float); ``cond``: ``[B, label_channels, H, W]`` one-hot label map (all zeros = the null
    label for classifier-free guidance). Returns a plain tensor ``[B, out_channels, H, W]``.
    H and W must be divisible by ``2 ** (len(channel_mult) - 1)``.
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_size: int = 128,
        in_channels: int = 1,
        out_channels: int = 1,
        label_channels: int = 5,
        model_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2, 4),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16, 8),
        num_head_channels: int = 64,
        spade_hidden: int = 128,
        dropout: float = 0.0,
        resblock_updown: bool = True,
        num_groups: int = 32,
        prediction_type: str = "eps",
    ) -> None:
        super().__init__()
        if not resblock_updown:
            raise ValueError("only resblock_updown=True (SDM) is implemented")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type {prediction_type!r}: choose one of {list(PREDICTION_TYPES)}"
            )
        self._v_tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        mult = tuple(int(m) for m in channel_mult)
        attn_ds = {sample_size // int(r) for r in attention_resolutions}
        mc, emb_ch = model_channels, 4 * model_channels

        def res(ch_in: int, ch_out: int, spade: bool, resample: str = "none") -> ResBlock:
            return ResBlock(
                ch_in,
                emb_ch,
                ch_out,
                label_channels=label_channels if spade else 0,
                spade_hidden=spade_hidden,
                num_groups=num_groups,
                dropout=dropout,
                resample=resample,
            )

        def attn(ch: int, ds: int) -> AttentionBlock | None:
            return AttentionBlock(ch, num_head_channels, num_groups) if ds in attn_ds else None

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.conv_in = nn.Conv2d(in_channels, mc, 3, padding=1)

        # encoder: skip_chs records the channels of every tensor pushed onto the skip stack
        self.input_blocks = nn.ModuleList()
        skip_chs, ch, ds = [mc], mc, 1
        for level, m in enumerate(mult):
            for _ in range(num_res_blocks):
                self.input_blocks.append(Stage(res(ch, m * mc, False), attn(m * mc, ds)))
                ch = m * mc
                skip_chs.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(Stage(res(ch, ch, False, "down")))
                ds *= 2
                skip_chs.append(ch)

        # middle: SPADE ResBlock + attention, SPADE ResBlock
        self.middle_block = nn.ModuleList(
            [
                Stage(res(ch, ch, True), AttentionBlock(ch, num_head_channels, num_groups)),
                Stage(res(ch, ch, True)),
            ]
        )

        # decoder: every stage consumes one skip; the last stage of a level upsamples
        self.output_blocks = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(num_res_blocks + 1):
                stage_in = ch + skip_chs.pop()
                ch = m * mc
                up = res(ch, ch, True, "up") if level and i == num_res_blocks else None
                self.output_blocks.append(Stage(res(stage_in, ch, True), attn(ch, ds), up))
            if level:
                ds //= 2

        self.out = nn.Sequential(
            nn.GroupNorm(num_groups, ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)),
        )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> SemanticUNet:
        """Build a randomly initialised model from a named preset (see ``presets.PRESETS``)."""
        from tte2tee_fast.models.presets import preset_config

        return cls(**preset_config(name, **overrides))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float | int, cond: torch.Tensor
    ) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])  # [B]
        emb = self.time_embed(
            timestep_embedding(t, self.config.model_channels).to(self.time_embed[0].weight.dtype)
        )  # [B, 4*mc]
        cond = cond.to(x.dtype)
        # encoder (never sees cond)
        h = self.conv_in(x)  # [B, mc, H, W]
        skips = [h]
        for stage in self.input_blocks:
            h = stage(h, emb, cond)
            skips.append(h)
        # middle
        for stage in self.middle_block:
            h = stage(h, emb, cond)
        # decoder with skip concatenation
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, cond)
        out = self.out(h)  # [B, out_channels, H, W]
        if self.config.prediction_type == "eps":
            return out
        alpha, sigma = self._schedule_tables(x.device)  # [T] float32 each
        idx = (t.round() if t.is_floating_point() else t).long().clamp(0, alpha.shape[0] - 1)  # [B]
        a = alpha[idx].view(-1, 1, 1, 1)
        s = sigma[idx].view(-1, 1, 1, 1)
        # in float32 whatever the network computed in: eps - sigma x_t is alpha v, small
        return (s * x.float() + a * out.float()).to(x.dtype)  # [B, out_channels, H, W] eps

    def _schedule_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``alpha_t``, ``sigma_t`` of the training schedule on ``device`` (float32, cached).

        Not buffers: a ``model.half()`` must not round them (eps = sigma x + alpha v needs sigma
        to float32 precision), and the weight files stay those of an eps-model.
        """
        if device not in self._v_tables:
            from tte2tee_fast.diffusion.schedule import NoiseSchedule

            sched = NoiseSchedule.cosine(1000)
            self._v_tables[device] = (
                sched.alpha.to(device, torch.float32),
                sched.sigma.to(device, torch.float32),
            )
        return self._v_tables[device]


PARAM_KINDS = ("conv", "linear", "attention", "spade", "norm", "lora", "other")


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameters by layer kind plus ``total`` and ``linear_layers`` (number of ``nn.Linear``).

    Kinds, first match wins: ``lora`` (peft adapter weights), ``norm`` (every GroupNorm),
    ``spade`` (SPADE conv heads), ``attention`` (qkv / proj_out), ``linear``, ``conv``, ``other``.
    The kinds add up to ``total``.
    """
    counts = dict.fromkeys(PARAM_KINDS, 0)
    owner: dict[str, str] = {}  # module name -> "spade" / "attention" for its submodules
    linear_layers = 0
    for name, mod in model.named_modules():
        if isinstance(mod, SPADEGroupNorm):
            owner[name] = "spade"
        elif isinstance(mod, AttentionBlock):
            owner[name] = "attention"
        if type(mod) is nn.Linear:
            linear_layers += 1
        n = sum(p.numel() for p in mod.parameters(recurse=False))
        if not n:
            continue
        parent = next((k for o, k in owner.items() if name.startswith(o + ".")), None)
        if "lora_" in name:
            kind = "lora"
        elif isinstance(mod, nn.GroupNorm):
            kind = "norm"
        elif parent is not None:
            kind = parent
        elif isinstance(mod, nn.Linear):
            kind = "linear"
        elif isinstance(mod, nn.Conv2d):
            kind = "conv"
        else:
            kind = "other"
        counts[kind] += n
    counts["total"] = sum(p.numel() for p in model.parameters())
    counts["linear_layers"] = linear_layers
    return counts


def parameter_table(model: nn.Module, title: str) -> str:
    """Human-readable table of :func:`count_parameters` (kinds with parameters, then the total)."""
    counts = count_parameters(model)
    total = counts["total"]
    lines = [title, f"{'kind':<11}{'parameters':>14}{'share':>9}"]
    for kind in PARAM_KINDS:
        if counts[kind]:
            lines.append(f"{kind:<11}{counts[kind]:>14,}{counts[kind] / total:>9.1%}")
    lines.append(f"{'total':<11}{total:>14,}")
    lines.append(f"Linear layers: {counts['linear_layers']}")
    return "\n".join(lines)


def describe_model(preset: str | None = None, model_dir: str | None = None) -> str:
    """Config summary and parameter table of a preset (built on the meta device) or a folder."""
    if model_dir is not None:
        from tte2tee_fast.models.io import load_model

        model, title = load_model(model_dir), f"model: {model_dir}"
    else:
        from tte2tee_fast.models.presets import preset_config

        with torch.device("meta"):  # counting only: no memory for the weights
            model = SemanticUNet(**preset_config(preset or "tiny"))
        title = f"preset: {preset or 'tiny'}"
    cfg = model.config
    summary = (
        f"sample_size {cfg.sample_size}, label_channels {cfg.label_channels}, "
        f"model_channels {cfg.model_channels}, channel_mult {tuple(cfg.channel_mult)}, "
        f"num_res_blocks {cfg.num_res_blocks}, attention at {tuple(cfg.attention_resolutions)} px, "
        f"{cfg.num_head_channels} channels/head, spade_hidden {cfg.spade_hidden}, "
        f"GroupNorm {cfg.num_groups}, output layer predicts {cfg.prediction_type}"
    )
    return parameter_table(model, f"{title}\n{summary}")
