"""Torch datasets: tensor contract, resizing against PIL/numpy, determinism, phantom, summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from tte2tee_fast.data.augment import AugmentConfig
from tte2tee_fast.data.dataset import (
    PairDataset,
    PhantomDataset,
    detect_format,
    open_source,
    summarize,
)
from tte2tee_fast.data.folder import FolderSource
from tte2tee_fast.data.schemas import TEE, TTE
from tte2tee_fast.errors import InputError


def _write_folder(
    root: Path, n=4, shape=(48, 40), schema="tte"
) -> list[tuple[np.ndarray, np.ndarray]]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    out = []
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    for i in range(n):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        mask = np.full(shape, 2, np.uint8)
        mask[: shape[0] // 6] = 0
        cy, cx = rng.uniform(0.4, 0.6) * shape[0], rng.uniform(0.4, 0.6) * shape[1]
        mask[(rows - cy) ** 2 + (cols - cx) ** 2 < 80] = 1 + 2 * (i % 2)
        mask[-5:, 10:20] = 4
        Image.fromarray(image).save(root / "images" / f"f{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"f{i}.png")
        out.append((image, mask))
    (root / "card.json").write_text(json.dumps({"schema": schema}))
    return out


def test_native_size_items_are_exact(tmp_path):
    cases = _write_folder(tmp_path)
    ds = PairDataset(FolderSource(tmp_path), size=(48, 40))
    assert len(ds) == 4 and ds.schema is TTE
    image, label = ds[1]
    assert image.dtype == torch.float32 and image.shape == (1, 48, 40)
    assert label.dtype == torch.int64 and label.shape == (48, 40)
    ref = cases[1][0].astype(np.float64) / 127.5 - 1.0
    np.testing.assert_allclose(image[0].numpy(), ref, atol=1e-6)
    np.testing.assert_array_equal(label.numpy(), cases[1][1])
    assert image.min() >= -1 and image.max() <= 1


@pytest.mark.parametrize("size", [(24, 20), (64, 64), (31, 17)])
def test_resize_matches_pil_bilinear_and_numpy_nearest(tmp_path, size):
    cases = _write_folder(tmp_path, n=1)
    image, label = PairDataset(FolderSource(tmp_path), size=size)[0]
    h, w = size
    pil = Image.fromarray(cases[0][0].astype(np.float32), mode="F").resize((w, h), Image.BILINEAR)
    ref = np.asarray(pil, np.float64) / 127.5 - 1.0
    np.testing.assert_allclose(image[0].numpy(), ref, atol=2e-3)
    src = cases[0][1]
    ri = np.minimum(((np.arange(h) + 0.5) * src.shape[0] / h).astype(int), src.shape[0] - 1)
    ci = np.minimum(((np.arange(w) + 0.5) * src.shape[1] / w).astype(int), src.shape[1] - 1)
    np.testing.assert_array_equal(label.numpy(), src[np.ix_(ri, ci)])


def test_augmentation_is_deterministic_per_seed_index_epoch(tmp_path):
    _write_folder(tmp_path)
    src = FolderSource(tmp_path)
    a = PairDataset(src, size=32, augment=AugmentConfig(), seed=3)
    b = PairDataset(src, size=32, augment=AugmentConfig(), seed=3)
    late = [b[i] for i in (3, 2, 1, 0)][::-1]  # read order does not matter
    for i in range(4):
        torch.testing.assert_close(a[i][0], late[i][0], rtol=0, atol=0)
        assert torch.equal(a[i][1], late[i][1])
    assert not torch.equal(a[0][0], PairDataset(src, 32, AugmentConfig(), seed=4)[0][0])
    before = a[0]
    a.set_epoch(1)
    assert not torch.equal(before[0], a[0][0])
    a.set_epoch(0)
    assert torch.equal(before[0], a[0][0])
    plain = PairDataset(src, size=32)[0][1]
    assert not torch.equal(before[1], plain)  # the transform really changed the labels


def test_augmented_labels_stay_in_schema_and_identity_config_is_a_no_op(tmp_path):
    _write_folder(tmp_path)
    src = FolderSource(tmp_path)
    aug = PairDataset(src, size=40, augment=AugmentConfig(), repeats=5)
    assert len(aug) == 20
    for i in range(len(aug)):
        image, label = aug[i]
        assert set(label.unique().tolist()) <= set(TTE.values)
        assert image.min() >= -1 and image.max() <= 1
    plain = PairDataset(src, size=40)
    noop = PairDataset(src, size=40, augment=AugmentConfig(affine=False, elastic=False))
    for i in range(len(src)):
        torch.testing.assert_close(noop[i][0], plain[i][0], atol=1e-5, rtol=0)
        assert torch.equal(noop[i][1], plain[i][1])


def test_phantom_dataset_matches_phantom_cases():
    from tte2tee_fast.data.phantom import case_seed, phantom_case

    ds = PhantomDataset("tee", n=3, size=64, seed=11)
    assert len(ds) == 3 and ds.schema is TEE
    for i in (0, 2):
        case = phantom_case("tee", None, 64, seed=case_seed(11, i))
        image, label = ds[i]
        np.testing.assert_allclose(image[0].numpy(), case.image / 127.5 - 1.0, atol=1e-6)
        np.testing.assert_array_equal(label.numpy(), case.mask)
    assert not torch.equal(ds[0][1], ds[1][1])
    aug = PhantomDataset("tte", n=2, size=64, seed=11, view="a2c", augment=AugmentConfig())
    labels = aug[1][1]
    assert set(labels.unique().tolist()) <= set(TTE.values)
    assert torch.equal(labels, aug[1][1])
    with pytest.raises(InputError, match="me4c"):
        PhantomDataset("tte", n=2, view="me4c")
    with pytest.raises(IndexError):
        ds[3]


def test_loader_batches(tmp_path):
    _write_folder(tmp_path)
    loader = torch.utils.data.DataLoader(PairDataset(FolderSource(tmp_path), size=16), batch_size=2)
    images, labels = next(iter(loader))
    assert images.shape == (2, 1, 16, 16) and labels.shape == (2, 16, 16)


def test_summary_counts_every_pixel(tmp_path):
    cases = _write_folder(tmp_path, n=3)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "images" / "g.png")
    Image.fromarray(np.full((10, 12), 4, np.uint8)).save(tmp_path / "masks" / "g.png")
    summary = summarize(open_source(tmp_path))
    assert summary.n == 4
    assert summary.sizes == {(48, 40): 3, (10, 12): 1}
    masks = [m for _, m in cases] + [np.full((10, 12), 4)]
    ref = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=5)
    fr = summary.fractions()
    for name, value in zip(TTE.names, TTE.values, strict=True):
        assert fr[name] == pytest.approx(ref[value] / ref.sum())
    text = summary.describe()
    assert "pairs: 4" in text and "48x40 (3)" in text and "lv_cavity" in text


def test_open_source_detects_the_format(tmp_path):
    _write_folder(tmp_path / "f")
    assert detect_format(tmp_path / "f") == "folder"
    pdir = tmp_path / "c" / "patient0007"
    pdir.mkdir(parents=True)
    image = np.zeros((40, 30), np.uint8)
    image[5:35, 5:25] = 100
    mask = np.zeros((40, 30), np.uint8)
    mask[15:25, 10:20] = 1
    for name, arr in (("patient0007_4CH_ED", image), ("patient0007_4CH_ED_gt", mask)):
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(pdir / f"{name}.nii.gz"))
    assert detect_format(tmp_path / "c") == "camus"
    src = open_source(tmp_path / "c")
    assert src.schema is TTE and src.names == ["patient0007_4CH_ED"]
    _, label = PairDataset(src, size=(40, 30))[0]
    expected = np.zeros((40, 30), np.int64)
    expected[5:35, 5:25] = 2
    expected[15:25, 10:20] = 1
    np.testing.assert_array_equal(label.numpy(), expected)
    with pytest.raises(InputError, match="converted to the 'tte' schema"):
        open_source(tmp_path / "c", fmt="camus", schema="tee")
