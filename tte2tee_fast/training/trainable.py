"""What the training loop trains (:class:`Trainable`): a module and the named parameters that
the optimizer updates, the EMA averages and the checkpoint stores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tte2tee_fast.errors import InputError


@dataclass(frozen=True, eq=False)
class Trainable:
    """What the loop trains: the network ``module`` (called as ``module(x, t, cond)``) and the
    parameters ``params`` (by name) that the optimizer updates, the EMA averages and the
    checkpoint stores. A model trained from scratch: every parameter (:meth:`whole`); an
    adapter: only the LoRA weights of a frozen base (adapt/train.py).

    It offers the ``named_parameters`` / ``parameters`` / ``state_dict`` that :class:`EMA` and
    :func:`save_checkpoint` read from a module, restricted to ``params``.
    """

    module: torch.nn.Module
    params: dict[str, torch.nn.Parameter]

    @classmethod
    def whole(cls, model: torch.nn.Module) -> Trainable:
        """Every parameter of ``model`` (which must hold no buffers: they are not checkpointed)."""
        if any(True for _ in model.buffers()):
            raise ValueError("Trainable.whole: the model has buffers, which checkpoints skip")
        return cls(model, dict(model.named_parameters()))

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return iter(self.params.items())

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(self.params.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.params.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor], where: str = "state") -> None:
        """Copy ``state`` into ``params``; names and shapes must match exactly."""
        missing = sorted(set(self.params) - set(state))
        extra = sorted(set(state) - set(self.params))
        if missing or extra:
            raise InputError(
                f"{where}: weights do not match the trained parameters (missing {missing[:3]}, "
                f"unexpected {extra[:3]})"
            )
        for name, p in self.params.items():
            if state[name].shape != p.shape:
                raise InputError(
                    f"{where}: {name} has shape {tuple(state[name].shape)}, "
                    f"expected {tuple(p.shape)}"
                )
            p.copy_(state[name])
