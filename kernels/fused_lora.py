"""Fused multi-adapter LoRA in a model: :class:`FusedLoRALinear` replaces an ``nn.Linear`` and
serves K adapters at once through :func:`~tte2tee_fast.kernels.ops.lora_linear` (the kernel of
``kernels/lora_linear.py``); :func:`fuse_adapters` swaps them into a SemanticUNet from adapter
state dicts (``tte2tee_fast.generate.multi_adapter.fuse_adapter_folders`` from ``tte2tee adapt``
folders); the context manager :func:`adapter_rows` sets which adapter each batch row uses. Only
``nn.Linear`` targets (the paper's "mlp" preset: time MLP + per-ResBlock embedding projections)
have a fused path; conv targets (attention 1x1, SPADE, ResBlock convs) must be merged into the
weights instead.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tte2tee_fast.errors import InputError

from .lora_linear import ACTS, check_adapter_index
from .ops import lora_linear


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
