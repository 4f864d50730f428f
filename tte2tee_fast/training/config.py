"""The configuration of a training run (:class:`TrainConfig`), shared by base training
(:mod:`tte2tee_fast.training.train`), the loop (:mod:`tte2tee_fast.training.loop`) and
adaptation (``AdaptConfig`` in :mod:`tte2tee_fast.adapt.train` extends it)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from tte2tee_fast.diffusion.objective import PREDICTIONS, WEIGHTINGS
from tte2tee_fast.errors import InputError

LR_SCHEDULES = ("constant", "cosine")
# fields that may differ between a run and its resumption (they do not change the numbers)
RESUMABLE_FIELDS = ("steps", "checkpoint_every", "log_every", "num_workers")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved as ``train_config.json``."""

    data: str = "phantom-tte"  # phantom-tte | phantom-tee | a folder of image/mask pairs
    preset: str = "tiny"  # micro | tiny | sdm256
    size: int = 128  # training resolution (square); the model's sample_size
    num_cases: int = 2000  # phantom pool size (a folder uses every pair it holds)
    schema: str | None = None  # label schema of a folder without card.json (tte, tee, camus)
    augment: int = 0  # augmented copies of every case added to the pool (affine + elastic)
    remap: str | None = None  # MaskR² spec (file or built-in name); None: identity on the data
    steps: int = 10000
    batch_size: int = 16
    lr: float = 5e-4
    lr_schedule: str = "constant"  # after warm-up: constant | cosine (decays to 0 at `steps`)
    warmup: int = 200  # linear LR warm-up steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # max EMA decay; warm-up (1 + n) / (10 + n), see training/ema.py
    prediction: str = "eps"  # eps | v: the model's output layer (its forward returns eps anyway)
    init: str | None = None  # model folder or packaged name whose weights start the run
    weighting: str = "min_snr"  # min_snr | none
    snr_gamma: float = 5.0
    label_dropout: float = 0.1  # probability of the null label, for classifier-free guidance
    bf16: bool = True  # bf16 autocast for the network (parameters and loss stay fp32)
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    num_workers: int = 0  # worker processes that build the data pool

    # fields that may differ between a run and its resumption
    RESUMABLE: ClassVar[tuple[str, ...]] = RESUMABLE_FIELDS
    # fields that must be >= 1 (a subclass may fill some of them later, see adapt/train.py)
    POSITIVE: ClassVar[tuple[str, ...]] = (
        "size",
        "num_cases",
        "steps",
        "batch_size",
        "checkpoint_every",
        "log_every",
    )

    def __post_init__(self) -> None:
        for name in self.POSITIVE:
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.warmup, self.num_workers, self.seed, self.augment) < 0:
            raise InputError("warmup, num_workers, seed and augment must be >= 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be a positive number, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"lr_schedule {self.lr_schedule!r}: choose one of {LR_SCHEDULES}")
        if self.prediction not in PREDICTIONS or self.weighting not in WEIGHTINGS:
            raise InputError(
                f"prediction must be one of {PREDICTIONS} and weighting one of {WEIGHTINGS}"
            )
        if not 0.0 <= self.label_dropout <= 1.0:
            raise InputError(f"label_dropout must be in [0, 1], got {self.label_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise InputError(f"{source}: unknown training options {unknown}")
        return cls(**data)
