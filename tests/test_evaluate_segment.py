"""The evaluation segmenter: MONAI Dice against hand-computed and numpy references, the
augmentation (no left-right flip, identity at zero ranges, seeded), training that learns,
bit-identical reruns and resumes, and the saved folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tte2tee_fast.data.schemas import TEE, TTE
from tte2tee_fast.errors import InputError
from tte2tee_fast.evaluate.segment import (
    SegmenterConfig,
    augment_batch,
    dice_per_class,
    load_segmenter,
    predict,
    structure_names,
    to_class_index,
    train_segmenter,
)

pytest.importorskip("monai")  # the eval extra: pip install -e ".[eval]"
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(schema="tee", size=32, channels=(4, 8), strides=(2,), batch_size=4, lr=1e-2)
# gray level of each TEE label in the toy frames: the class is readable from the intensity
LEVELS = np.array([0, 90, 30, 60, 170, 230], dtype=np.float64)


def toy_frames(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Frames of one random rectangle of each TEE structure per quadrant on a background,
    mild noise."""
    rng = np.random.default_rng(seed)
    masks = np.ones((n, size, size), dtype=np.uint8)
    half = size // 2
    for i in range(n):
        masks[i, :2] = 0  # outside strip
        for value, (r0, c0) in zip(
            (2, 3, 4, 5), ((2, 0), (2, half), (half, 0), (half, half)), strict=True
        ):
            r, c = r0 + rng.integers(1, 5), c0 + rng.integers(1, 5)
            h, w = rng.integers(6, half - 5, 2)
            masks[i, r : r + h, c : c + w] = value
    images = LEVELS[masks] + rng.normal(0, 8, masks.shape)
    return np.clip(images, 0, 255).astype(np.uint8), masks


def numpy_dice(pred: np.ndarray, target: np.ndarray, value: int) -> float:
    p, t = pred == value, target == value
    if not t.any():
        return float("nan")
    return 2.0 * np.logical_and(p, t).sum() / (p.sum() + t.sum())


def test_structures_exclude_outside_and_background():
    assert structure_names(TEE) == ["la", "lv", "ra", "rv"]
    assert structure_names(TTE) == ["lv_cavity", "lv_myocardium", "la"]


def test_dice_hand_computed_case():
    target = np.ones((1, 4, 4), dtype=np.uint8)
    pred = target.copy()
    target[0, 0, :4] = 2  # LA: 4 pixels
    pred[0, 0, :2] = 2  # 2 of them found
    pred[0, 1, :2] = 2  # and 2 false positives: Dice = 2*2 / (4 + 4) = 0.5
    target[0, 3, 3] = 3  # LV: 1 pixel, missed -> 0
    dice = dice_per_class(pred, target, TEE)
    assert dice.shape == (1, 4)
    assert dice[0, 0] == pytest.approx(0.5)
    assert dice[0, 1] == 0.0
    assert np.isnan(dice[0, 2]) and np.isnan(dice[0, 3])  # RA, RV absent from the reference


def test_dice_identical_is_one_and_matches_numpy():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 6, size=(3, 16, 16)).astype(np.uint8)
    np.testing.assert_array_equal(dice_per_class(target, target, TEE), np.ones((3, 4)))
    pred = target.copy()
    flip = rng.random(pred.shape) < 0.3
    pred[flip] = rng.integers(0, 6, size=int(flip.sum()))
    got = dice_per_class(pred, target, TEE)
    for k, value in enumerate((2, 3, 4, 5)):
        ref = [numpy_dice(pred[i], target[i], value) for i in range(3)]
        np.testing.assert_allclose(got[:, k], ref, rtol=1e-6)


def test_dice_refuses_unknown_values_and_shape_mismatch():
    a = np.zeros((1, 4, 4), dtype=np.uint8)
    with pytest.raises(InputError, match="not in schema 'tee'"):
        dice_per_class(a, a + 7, TEE)
    with pytest.raises(InputError, match="differ in shape"):
        dice_per_class(a, a[:, :2], TEE)


def test_augment_identity_at_zero_ranges():
    cfg = SegmenterConfig(**TINY, gamma=(1, 1), gain=(1, 1), rotation_deg=0, scale=(1, 1))
    images, masks = toy_frames(3, 1)
    x = torch.from_numpy(images).float()[:, None] / 255
    y = torch.from_numpy(to_class_index(masks, TEE))
    xa, ya = augment_batch(x, y, cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(xa, x, atol=1e-5, rtol=0)
    assert torch.equal(ya, y)


def test_augment_never_mirrors_left_and_right():
    """Left heart on the left, right heart on the right stays so under every draw (a mirror
    image would swap them: the reason there is no left-right flip)."""
    size = 32
    y = torch.ones(64, size, size, dtype=torch.long)
    y[:, 8:24, 2:14] = 2  # "LA" on the left
    y[:, 8:24, 18:30] = 4  # "RA" on the right
    x = torch.rand(64, 1, size, size)
    cfg = SegmenterConfig(**TINY)
    xa, ya = augment_batch(x, y, cfg, torch.Generator().manual_seed(1))
    cols = torch.arange(size, dtype=torch.float64)
    for i in range(64):
        left = cols[torch.nonzero(ya[i] == 2)[:, 1]].mean()
        right = cols[torch.nonzero(ya[i] == 4)[:, 1]].mean()
        assert left < size / 2 - 4 < size / 2 + 4 < right
    assert set(ya.unique().tolist()) <= {0, 1, 2, 4}  # nearest: no new labels but the fill
    assert not torch.equal(ya, y)  # it did transform
    xb, yb = augment_batch(x, y, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_training_learns_and_reruns_identically(tmp_path):
    images, masks = toy_frames(24, 0)
    cfg = SegmenterConfig(**TINY, steps=150, seed=3)
    seg = train_segmenter(images, masks, cfg)
    test_images, test_masks = toy_frames(8, 99)
    dice = dice_per_class(predict(seg, test_images), test_masks, TEE)
    assert np.nanmean(dice) > 0.8, dice
    # same seed, same weights; another seed, other weights
    short = SegmenterConfig(**TINY, steps=5, seed=3)
    a = train_segmenter(images, masks, short).model.state_dict()
    b = train_segmenter(images, masks, short).model.state_dict()
    c = train_segmenter(images, masks, SegmenterConfig(**TINY, steps=5, seed=4)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    images, masks = toy_frames(12, 2)
    cfg = SegmenterConfig(**TINY, steps=6, checkpoint_every=2, seed=5)
    straight = train_segmenter(images, masks, cfg, out=tmp_path / "a").model.state_dict()

    def stop_at_5(step: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_segmenter(images, masks, cfg, out=tmp_path / "b", log=stop_at_5)
    state = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4
    resumed = train_segmenter(images, masks, cfg, out=tmp_path / "b")
    assert resumed.meta["resumed_at"] == 4
    assert all(torch.equal(straight[k], resumed.model.state_dict()[k]) for k in straight)
    assert not (tmp_path / "b" / "checkpoint").exists()  # complete folder: no checkpoint left
    other = SegmenterConfig(**TINY, steps=8, checkpoint_every=2, seed=5)
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(images, masks, other, out=tmp_path / "c", log=stop_at_5)
    with pytest.raises(InputError, match="another configuration"):
        train_segmenter(images, masks, cfg, out=tmp_path / "c")
    with pytest.raises(InputError, match="other training frames"):
        train_segmenter(255 - images, masks, other, out=tmp_path / "c")


def test_saved_folder_round_trip_and_bad_folders(tmp_path):
    images, masks = toy_frames(8, 4)
    seg = train_segmenter(images, masks, SegmenterConfig(**TINY, steps=3), out=tmp_path / "seg")
    assert {p.name for p in (tmp_path / "seg").iterdir()} == {
        "model.safetensors",
        "config.json",
        "training.json",
    }
    loaded = load_segmenter(tmp_path / "seg")
    assert loaded.config == seg.config and loaded.schema == TEE
    np.testing.assert_array_equal(predict(loaded, images), predict(seg, images))
    # predictions at another frame size come back at that size, in schema values
    big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)
    out = predict(loaded, big)
    assert out.shape == big.shape and set(np.unique(out)) <= set(TEE.values)
    with pytest.raises(InputError, match="not a segmenter folder"):
        load_segmenter(tmp_path)
    (tmp_path / "seg" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="cannot load segmenter weights"):
        load_segmenter(tmp_path / "seg")


def test_config_checks():
    with pytest.raises(InputError, match="strides"):
        SegmenterConfig(channels=(4, 8, 16), strides=(2,))
    with pytest.raises(InputError, match="multiple of 4"):
        SegmenterConfig(size=30, channels=(4, 8, 16), strides=(2, 2))
    with pytest.raises(InputError, match="training set is empty"):
        train_segmenter(
            np.zeros((0, 32, 32), np.uint8),
            np.zeros((0, 32, 32), np.uint8),
            SegmenterConfig(**TINY),
        )
