"""Exponential moving average of model parameters, with warm-up.

The decay used at the ``n``-th update (``n = 0, 1, 2, ...``) is, as in diffusers ``EMAModel``
with ``update_after_step=0``::

    n == 0                      -> 0        (the first update copies the parameters)
    power is None  (default)    -> min(max_decay, (1 + n) / (10 + n))
    power = p      (diffusers'  -> min(max_decay, 1 - (1 + n) ** -p)    (p = 2/3 or 3/4)
                    "ema warmup")

so early in training the average follows the weights closely and only later averages over
about ``1 / (1 - max_decay)`` steps. The update is ``shadow -= (1 - decay) * (shadow - param)``.
Buffers are not averaged: :meth:`EMA.copy_to` copies only parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from tte2tee_fast.errors import InputError


def ema_decay(num_updates: int, max_decay: float = 0.999, power: float | None = None) -> float:
    """Decay for the update that follows ``num_updates`` earlier updates."""
    if num_updates <= 0:
        return 0.0
    if power is None:
        cur = (1.0 + num_updates) / (10.0 + num_updates)
    else:
        cur = 1.0 - (1.0 + num_updates) ** -power
    return min(cur, max_decay)


class EMA:
    """Shadow copies (fp32) of a model's parameters, updated with :func:`ema_decay`."""

    def __init__(self, model: nn.Module, max_decay: float = 0.999, power: float | None = None):
        if not 0.0 <= max_decay < 1.0:
            raise InputError(f"EMA decay must be in [0, 1), got {max_decay}")
        self.max_decay = max_decay
        self.power = power
        self.num_updates = 0
        self.names = [name for name, _ in model.named_parameters()]
        self.shadow = [p.detach().float().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Fold the model's current parameters into the average; returns the decay used."""
        decay = ema_decay(self.num_updates, self.max_decay, self.power)
        params = [p.detach().float() for p in model.parameters()]
        if len(params) != len(self.shadow):
            raise InputError(f"EMA holds {len(self.shadow)} tensors, model has {len(params)}")
        torch._foreach_sub_(self.shadow, torch._foreach_sub(self.shadow, params), alpha=1.0 - decay)
        self.num_updates += 1
        return decay

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged parameters into ``model`` (same architecture)."""
        params = list(model.parameters())
        if len(params) != len(self.shadow):
            raise InputError(f"EMA holds {len(self.shadow)} tensors, model has {len(params)}")
        for p, s in zip(params, self.shadow, strict=True):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors keyed by parameter name, plus ``__num_updates__`` (safetensors-ready)."""
        state = {name: s.clone() for name, s in zip(self.names, self.shadow, strict=True)}
        state["__num_updates__"] = torch.tensor(self.num_updates, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in state]
        extra = [k for k in state if k not in self.names and k != "__num_updates__"]
        if missing or extra or "__num_updates__" not in state:
            raise InputError(
                f"EMA state does not match the model: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        for name, s in zip(self.names, self.shadow, strict=True):
            if state[name].shape != s.shape:
                raise InputError(
                    f"EMA tensor {name}: shape {tuple(state[name].shape)} != {tuple(s.shape)}"
                )
            s.copy_(state[name])
        self.num_updates = int(state["__num_updates__"])
