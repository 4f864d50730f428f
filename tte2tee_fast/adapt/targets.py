"""LoRA target presets on the SemanticUNet: which layers an adapter trains.

Presets (arXiv 2508.13077 adapts the "MLP" layers; the others are for ablations):

``mlp``    the ``nn.Linear`` layers: the time MLP (``time_embed``) and every ResBlock's embedding
           projection (``emb_layers``). The paper's target: rank 1 on ``sdm256`` is 98,048
           parameters (44 layers).
``attn``   attention ``qkv`` and ``proj_out`` (1x1 convs).
``conv``   ResBlock convs: ``in_layers`` and ``out_layers`` 3x3 convs and the 1x1 ``skip`` conv.
``spade``  SPADE norm convs: the shared label conv, ``mlp_gamma`` and ``mlp_beta``.
``all``    the union of the four.

A preset resolves to an explicit list of module names on a given model
(:func:`resolve_targets`): the walk finds the owning blocks by type (SemanticUNet, ResBlock,
AttentionBlock, SPADEGroupNorm) and takes the Linear / Conv2d layers inside the named
sub-modules, so no regex has to track the module layout. :func:`lora_config` puts that list in
a :class:`peft.LoraConfig`; :func:`count_lora_parameters` counts the adapter size analytically
(peft's LoRA shapes: Linear ``A [r, in]``, ``B [out, r]``; Conv2d ``A [r, in, kh, kw]``,
``B [out, r, 1, 1]``). Works on a model built on the meta device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from peft import LoraConfig
from torch import nn

from tte2tee_fast.errors import InputError
from tte2tee_fast.models.blocks import AttentionBlock, ResBlock, SPADEGroupNorm
from tte2tee_fast.models.unet import SemanticUNet

TARGET_PRESETS = ("mlp", "attn", "conv", "spade", "all")
_GROUPS = ("mlp", "attn", "conv", "spade")


def _layers(parent: nn.Module, kind: type[nn.Module]) -> Iterator[nn.Module]:
    """Every ``kind`` layer inside ``parent`` (``parent`` itself included)."""
    return (m for m in parent.modules() if isinstance(m, kind))


def _group_layers(model: nn.Module, group: str) -> Iterator[nn.Module]:
    """The layers of one preset group, found through the blocks that own them."""
    for block in model.modules():
        if group == "mlp":
            if isinstance(block, SemanticUNet):
                yield from _layers(block.time_embed, nn.Linear)
            elif isinstance(block, ResBlock):
                yield from _layers(block.emb_layers, nn.Linear)
        elif group == "attn" and isinstance(block, AttentionBlock):
            yield from (block.qkv, block.proj_out)
        elif group == "conv" and isinstance(block, ResBlock):
            for part in (block.in_layers, block.out_layers, block.skip):
                yield from _layers(part, nn.Conv2d)
        elif group == "spade" and isinstance(block, SPADEGroupNorm):
            for part in (block.shared, block.mlp_gamma, block.mlp_beta):
                yield from _layers(part, nn.Conv2d)


def resolve_targets(model: nn.Module, preset: str) -> list[str]:
    """Module names (``named_modules`` order) that LoRA preset ``preset`` adapts on ``model``.

    ``model`` is a SemanticUNet without LoRA layers (any device, ``meta`` included).
    """
    if preset not in TARGET_PRESETS:
        raise InputError(f"unknown LoRA target preset {preset!r}; choose one of {TARGET_PRESETS}")
    groups = _GROUPS if preset == "all" else (preset,)
    chosen = {id(m) for g in groups for m in _group_layers(model, g)}
    names = []
    for name, module in model.named_modules():
        if id(module) not in chosen:
            continue
        if "lora_" in name or "base_layer" in name:
            raise InputError("model already carries LoRA layers: resolve targets on the base")
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise InputError(f"layer {name} is a grouped conv (groups={module.groups}): no LoRA")
        names.append(name)
    if not names:
        raise InputError(f"LoRA target preset {preset!r} matches no layer of this model")
    return names


def lora_config(
    model: nn.Module, preset: str, rank: int, alpha: float | None = None, dropout: float = 0.0
) -> LoraConfig:
    """A :class:`peft.LoraConfig` adapting preset ``preset`` of ``model`` at rank ``rank``.

    ``alpha`` defaults to ``rank`` (LoRA scale ``alpha / rank = 1``). ``target_modules`` is the
    explicit list of :func:`resolve_targets`; weights use peft's default init (A Kaiming, B 0).
    Use with ``model.add_adapter(cfg)`` (diffusers) or ``peft.get_peft_model(model, cfg)``.
    """
    _check_rank(rank)
    if alpha is not None and not alpha > 0:
        raise InputError(f"LoRA alpha must be > 0, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise InputError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    return LoraConfig(
        r=rank,
        lora_alpha=float(rank if alpha is None else alpha),
        lora_dropout=dropout,
        target_modules=resolve_targets(model, preset),
    )


def _check_rank(rank: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InputError(f"LoRA rank must be a positive integer, got {rank!r}")


def lora_shapes(layer: nn.Module, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of peft's LoRA ``A`` and ``B`` weights for one Linear / Conv2d (groups 1) layer."""
    if isinstance(layer, nn.Linear):
        return (rank, layer.in_features), (layer.out_features, rank)
    if isinstance(layer, nn.Conv2d):
        return (rank, layer.in_channels, *layer.kernel_size), (layer.out_channels, rank, 1, 1)
    raise InputError(f"no LoRA for layer type {type(layer).__name__}")


def lora_layer_parameters(layer: nn.Module, rank: int) -> int:
    """Parameters of peft's LoRA A and B for one layer at rank ``rank``."""
    return sum(math.prod(shape) for shape in lora_shapes(layer, rank))


def count_lora_parameters(model: nn.Module, preset: str, rank: int) -> int:
    """Trainable parameters of a rank-``rank`` LoRA adapter on preset ``preset`` of ``model``."""
    _check_rank(rank)
    return sum(
        lora_layer_parameters(model.get_submodule(n), rank) for n in resolve_targets(model, preset)
    )
