"""Segmentation for evaluation: MONAI's 2-D U-Net, Dice + cross-entropy, per-class Dice.

The segmenter is what structural fidelity and the downstream experiment measure with. It is
small on purpose (channels 8-16-32-64, three stride-2 levels, ~5e4 parameters) so that one
training fits in a few minutes at 128² on two CPU cores.

* Network: ``monai.networks.nets.UNet(spatial_dims=2)``, one output channel per label of the
  schema (class index ``k`` = ``schema.values[k]``; TEE: outside, background, LA, LV, RA, RV).
* Loss: ``monai.losses.DiceCELoss`` (softmax, labels one-hot encoded by the loss).
* Augmentation (torch, from the training generator): gamma and gain on the intensity, rotation
  ±10° and isotropic scale 0.9-1.1 about the frame centre. **No left-right flip**: in a
  four-chamber view (TTE apical and TEE mid-oesophageal alike) a mirror image swaps the left
  and right heart, so a flipped frame would teach the network that LA/LV may sit on either
  side; an up-down flip would put the transducer apex at the bottom.
* Metric: ``monai.metrics.DiceMetric(include_background=True, reduction="none",
  ignore_empty=True)`` on one-hot maps of *every* class; the structures reported are the
  schema's labels other than ``outside`` and ``background`` (TEE: LA, LV, RA, RV), chosen
  after the metric. ``include_background=True`` only keeps MONAI from dropping channel 0
  (``outside``), which it would otherwise treat as background. ``ignore_empty=True``: a
  structure absent from the reference mask gives NaN (left out of means), not 0 or 1.
* Deterministic from ``seed``: batch order and augmentation come from one ``torch.Generator``,
  initial weights from ``torch.manual_seed`` (in a forked RNG: the global one is untouched),
  and ``torch.use_deterministic_algorithms(True)`` is on
  while training (same machine and thread count give the same weights).
* Saved as a folder: ``model.safetensors`` (fp32) + ``config.json`` (the
  :class:`SegmenterConfig` and the schema) + whatever the caller adds (``training.json``).
  A training folder given ``out=`` gets ``out/checkpoint/`` every ``checkpoint_every`` steps
  and resumes from it, so a run cut short continues where it stopped.

>>> seg = load_segmenter("segmenter-tee")  # the packaged one  # doctest: +SKIP
>>> labels = predict(seg, images)  # uint8 [N, H, W] -> label values uint8 [N, H, W]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tte2tee_fast.data.schemas import LabelSchema, get_schema
from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import staged_folder, write_json_atomic

FORMAT = "tte2tee-segmenter"
FORMAT_VERSION = 1
NON_STRUCTURES = ("outside", "background")


@dataclass(frozen=True)
class SegmenterConfig:
    """Network, loss, optimiser and augmentation of one segmenter training."""

    schema: str = "tee"
    size: int = 128  # frames are resized to size x size
    channels: tuple[int, ...] = (8, 16, 32, 64)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    steps: int = 800
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0
    gamma: tuple[float, float] = (0.7, 1.5)  # intensity ** g, g ~ log-uniform
    gain: tuple[float, float] = (0.8, 1.2)  # intensity * a (keeps black outside black)
    rotation_deg: float = 10.0  # angle ~ U(-r, r)
    scale: tuple[float, float] = (0.9, 1.1)  # zoom ~ U(lo, hi)
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        if len(self.strides) != len(self.channels) - 1:
            raise InputError(
                f"segmenter: {len(self.channels)} channel levels need {len(self.channels) - 1} "
                f"strides, got {list(self.strides)}"
            )
        if self.size % math.prod(self.strides):
            raise InputError(
                f"segmenter size {self.size} must be a multiple of {math.prod(self.strides)}"
            )
        for name in ("gamma", "gain", "scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise InputError(f"segmenter {name} range must satisfy 0 < lo <= hi, got {lo, hi}")

    @classmethod
    def from_dict(cls, data: dict) -> SegmenterConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        )


@dataclass(frozen=True, eq=False)
class Segmenter:
    """A trained network, its configuration and label schema."""

    model: nn.Module
    config: SegmenterConfig
    schema: LabelSchema
    path: Path | None = None
    meta: dict = field(default_factory=dict)  # training.json when loaded from a folder

    @property
    def structures(self) -> list[str]:
        return structure_names(self.schema)


def structure_names(schema: LabelSchema) -> list[str]:
    """The labels Dice is reported for: every label but ``outside`` and ``background``."""
    return [n for n in schema.names if n not in NON_STRUCTURES]


def require_monai() -> None:
    """MONAI is the ``eval`` extra; say how to get it instead of a traceback."""
    try:
        import monai  # noqa: F401
    except ImportError:
        raise InputError(
            "evaluation needs MONAI: pip install 'tte2tee-fast[eval]' (or pip install monai)"
        ) from None


def build_network(cfg: SegmenterConfig, num_classes: int) -> nn.Module:
    """MONAI 2-D U-Net: 1 input channel, ``num_classes`` logits."""
    require_monai()
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=num_classes,
        channels=cfg.channels,
        strides=cfg.strides,
        num_res_units=cfg.num_res_units,
    )


def value_lut(schema: LabelSchema) -> np.ndarray:
    """``[256]`` int64: label value -> class index (-1 for values outside the schema)."""
    lut = np.full(256, -1, dtype=np.int64)
    lut[list(schema.values)] = np.arange(schema.num_labels)
    return lut


def to_class_index(masks: np.ndarray, schema: LabelSchema) -> np.ndarray:
    """Label values ``[N, H, W]`` -> class indices int64 ``[N, H, W]`` (checked)."""
    masks = np.asarray(masks)
    schema.validate(masks, source="masks")
    return value_lut(schema)[masks.astype(np.int64)]


def prepare(images: np.ndarray, masks: np.ndarray | None, size: int) -> tuple[torch.Tensor, ...]:
    """uint8 ``[N, H, W]`` images (0..255) and optional label arrays -> ``[N, 1, S, S]`` in
    [0, 1] and long ``[N, S, S]`` (bilinear with antialiasing / nearest)."""
    img = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None] / 255.0  # [N, 1, H, W]
    if tuple(img.shape[-2:]) != (size, size):
        img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=True)
    if masks is None:
        return (img.clamp_(0.0, 1.0),)
    lab = torch.from_numpy(np.asarray(masks, dtype=np.int64))  # [N, H, W]
    if tuple(lab.shape[-2:]) != (size, size):
        lab = F.interpolate(lab[:, None].float(), size=(size, size), mode="nearest-exact")
        lab = lab[:, 0].long()
    return img.clamp_(0.0, 1.0), lab


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: SegmenterConfig,
    generator: torch.Generator,
    fill_index: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gamma, gain, rotation and scale, one draw per frame (see the module docstring).

    ``images [B, 1, S, S]`` in [0, 1], ``labels [B, S, S]`` class indices; the frame border
    brought in by the transform is black and labelled ``fill_index``.
    """
    b = images.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator, dtype=torch.float64)

    log_g = uniform(math.log(cfg.gamma[0]), math.log(cfg.gamma[1]))  # [B]
    gain = uniform(*cfg.gain)
    angle = uniform(-cfg.rotation_deg, cfg.rotation_deg) * (math.pi / 180.0)
    zoom = uniform(*cfg.scale)
    # intensity: x ** g * a, clamped to [0, 1]
    g = log_g.exp().float()[:, None, None, None]
    x = (images.clamp(min=1e-6) ** g * gain.float()[:, None, None, None]).clamp_(0.0, 1.0)
    x = torch.where(images > 0, x, torch.zeros_like(x))
    # geometry: output pixel p samples the input at R(-angle) p / zoom (normalised coordinates)
    cos, sin = (angle.cos() / zoom).float(), (angle.sin() / zoom).float()
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # [B, S, S, 2]
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    shifted = (labels + 1).float()[:, None]  # 0 marks "outside the frame"
    lab = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    lab = lab[:, 0].round().long() - 1
    lab[lab < 0] = fill_index
    return x, lab


def fill_index(schema: LabelSchema) -> int:
    """Class index written where augmentation leaves the frame (``outside`` if present)."""
    return schema.names.index("outside") if "outside" in schema.names else 0


def _checkpoint_save(
    out: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    step: int,
    cfg_dict: dict,
) -> None:
    from safetensors.torch import save_file

    from tte2tee_fast.training.checkpoint import optimizer_to_flat

    with staged_folder(out / "checkpoint") as tmp:
        tmp.mkdir()
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(tmp / "model.safetensors"),
        )
        tensors, index = optimizer_to_flat(opt.state_dict())
        tensors["__generator__"] = gen.get_state()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json_atomic(
            tmp / "state.json", {"step": step, "config": cfg_dict, "optimizer": index}
        )


def _checkpoint_load(
    ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, cfg_dict: dict
) -> int:
    from safetensors.torch import load_file

    from tte2tee_fast.training.checkpoint import optimizer_from_flat

    try:
        state = json.loads((ckpt / "state.json").read_text())
        if state.get("config") != json.loads(json.dumps(cfg_dict)):
            raise InputError(
                f"{ckpt}: checkpoint of another configuration or other training frames; "
                "remove it or use another --out"
            )
        model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
        tensors = load_file(str(ckpt / "optimizer.safetensors"))
        gen.set_state(tensors.pop("__generator__"))
        opt.load_state_dict(optimizer_from_flat(tensors, state["optimizer"]))
    except InputError:
        raise
    except Exception as err:  # missing file, truncated safetensors, shape mismatch
        raise InputError(f"checkpoint {ckpt} cannot be restored: {err}") from None
    return int(state["step"])


def train_segmenter(
    images: np.ndarray,
    masks: np.ndarray,
    cfg: SegmenterConfig = SegmenterConfig(),
    out: str | Path | None = None,
    log: Callable[[int, float], None] | None = None,
) -> Segmenter:
    """Train a segmenter on uint8 images ``[N, H, W]`` and label maps ``[N, H, W]`` (values of
    ``cfg.schema``). With ``out`` the run checkpoints to ``out/checkpoint`` and resumes from it;
    the finished weights are saved to ``out`` (see :func:`save_segmenter`).

    >>> seg = train_segmenter(images, masks, SegmenterConfig(steps=800))  # doctest: +SKIP
    """
    require_monai()
    from monai.losses import DiceCELoss

    schema = get_schema(cfg.schema)
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 3 or images.shape != masks.shape:
        raise InputError(
            f"training frames: images {images.shape} and masks {masks.shape} must both be [N, H, W]"
        )
    if len(images) == 0:
        raise InputError("training set is empty")
    x_all, y_all = prepare(images, to_class_index(masks, schema), cfg.size)  # [N,1,S,S], [N,S,S]
    # what a checkpoint must match to be resumed: the configuration and the training frames
    digest = hashlib.sha256(images.tobytes() + masks.tobytes()).hexdigest()
    cfg_dict = {**asdict(cfg), "data_sha256": digest}
    with torch.random.fork_rng(devices=[]):  # initial weights from cfg.seed, global RNG untouched
        torch.manual_seed(cfg.seed)
        model = build_network(cfg, schema.num_labels)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = DiceCELoss(
        to_onehot_y=True, softmax=True, lambda_dice=cfg.lambda_dice, lambda_ce=cfg.lambda_ce
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    out = None if out is None else Path(out)
    start = 0
    if out is not None and (out / "checkpoint" / "state.json").is_file():
        start = _checkpoint_load(out / "checkpoint", model, opt, gen, cfg_dict)
    # cosine decay of the learning rate over cfg.steps, counted from step `start`
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s + start, cfg.steps) / cfg.steps))
    )
    fill = fill_index(schema)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    t0, loss_value = time.perf_counter(), float("nan")
    try:
        model.train()
        for step in range(start, cfg.steps):
            # batch: indices, then one augmentation draw per frame
            idx = torch.randint(len(x_all), (cfg.batch_size,), generator=gen)
            x, y = augment_batch(x_all[idx], y_all[idx], cfg, gen, fill)
            # step: Dice + CE on the logits
            loss = loss_fn(model(x * 2.0 - 1.0), y[:, None])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_value = float(loss.detach())
            if log is not None:
                log(step + 1, loss_value)
            done = step + 1
            if out is not None and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                out.mkdir(parents=True, exist_ok=True)
                _checkpoint_save(out, model, opt, gen, done, cfg_dict)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    model.eval()
    meta = {"final_loss": loss_value, "seconds": time.perf_counter() - t0, "resumed_at": start}
    seg = Segmenter(model=model, config=cfg, schema=schema, meta=meta)
    if out is not None:
        save_segmenter(seg, out, meta)
    return seg


def save_segmenter(seg: Segmenter, out: str | Path, meta: dict | None = None) -> Path:
    """Write ``out/model.safetensors``, ``out/config.json`` and ``out/training.json`` atomically
    (a ``checkpoint/`` inside ``out`` is dropped: the run is complete)."""
    from safetensors.torch import save_file

    out = Path(out)
    with staged_folder(out) as tmp:
        tmp.mkdir()
        state = {k: v.detach().contiguous() for k, v in seg.model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        write_json_atomic(
            tmp / "config.json",
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "config": asdict(seg.config),
                "schema": {
                    "name": seg.schema.name,
                    "names": list(seg.schema.names),
                    "values": list(seg.schema.values),
                },
            },
        )
        write_json_atomic(tmp / "training.json", meta if meta is not None else seg.meta)
    return out


def load_segmenter(path: str | Path | None = None) -> Segmenter:
    """A segmenter folder, or a packaged one by name (``None``: ``segmenter-tee``)."""
    from safetensors.torch import load_file

    from tte2tee_fast.packaged import packaged_path, resolve_asset

    folder = packaged_path("segmenter-tee") if path is None else resolve_asset(path)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise InputError(f"{folder}: not a segmenter folder (no config.json)")
    try:
        data = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{cfg_file}: cannot read segmenter config ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{cfg_file}: not a tte2tee segmenter config (format {FORMAT!r})")
    if data.get("version") != FORMAT_VERSION:
        raise InputError(
            f"{cfg_file}: segmenter format version {data.get('version')}, this install reads "
            f"{FORMAT_VERSION}"
        )
    cfg = SegmenterConfig.from_dict(data["config"])
    schema = get_schema(cfg.schema)
    model = build_network(cfg, schema.num_labels)
    try:
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
    except Exception as err:  # missing, truncated, or weights of another shape
        raise InputError(
            f"{folder}/model.safetensors: cannot load segmenter weights ({err})"
        ) from None
    model.eval()
    meta_file = folder / "training.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return Segmenter(model=model, config=cfg, schema=schema, path=folder, meta=meta)


@torch.no_grad()
def predict_logits(seg: Segmenter, images: np.ndarray, batch_size: int = 32) -> torch.Tensor:
    """Logits ``[N, C, H, W]`` at the frames' own size for uint8 images ``[N, H, W]``."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise InputError(f"frames must be [N, H, W] gray images, got shape {images.shape}")
    h, w = images.shape[1:]
    outs = []
    for i in range(0, len(images), batch_size):
        (x,) = prepare(images[i : i + batch_size], None, seg.config.size)  # [B, 1, S, S]
        logits = seg.model(x * 2.0 - 1.0)  # [B, C, S, S]
        if (h, w) != (seg.config.size, seg.config.size):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        outs.append(logits)
    return torch.cat(outs)


def predict(seg: Segmenter, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Label values uint8 ``[N, H, W]`` (in the segmenter's schema) for uint8 images ``[N, H, W]``."""
    index = predict_logits(seg, images, batch_size).argmax(1).numpy()  # [N, H, W]
    return np.asarray(seg.schema.values, dtype=np.uint8)[index]


def dice_per_class(pred: np.ndarray, target: np.ndarray, schema: LabelSchema) -> np.ndarray:
    """MONAI Dice per frame and structure, float64 ``[N, K]`` for the ``K`` structures of
    :func:`structure_names` (NaN where the structure is absent from ``target``).

    ``pred`` and ``target`` are label values ``[N, H, W]`` of ``schema``.
    """
    require_monai()
    from monai.metrics import DiceMetric

    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise InputError(
            f"predicted {pred.shape} and reference {target.shape} masks differ in shape"
        )
    c = schema.num_labels
    p = F.one_hot(torch.from_numpy(to_class_index(pred, schema)), c).permute(0, 3, 1, 2)
    t = F.one_hot(torch.from_numpy(to_class_index(target, schema)), c).permute(0, 3, 1, 2)
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    dice = metric(p.float(), t.float()).double().numpy()  # [N, C]
    keep = [schema.names.index(n) for n in structure_names(schema)]
    return dice[:, keep]
