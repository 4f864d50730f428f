"""Read helpers shared by the dataset readers: 8-bit PNG images, label PNGs, medical images.

Every reader returns a 2-D numpy array ``[H, W]`` and raises :class:`InputError` naming the
file when it is missing, unreadable, corrupt or of an unsupported kind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tte2tee_fast.errors import InputError

_GRAY_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I", "1")


def _open_png(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: cannot read image ({err})") from None
    return img


def read_gray_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 ``[H, W]``: RGB(A) is converted to luminance, 16-bit scaled down."""
    path = Path(path)
    img = _open_png(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)  # [H, W]
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.uint8).copy()


def read_label_image(path: str | Path) -> np.ndarray:
    """A label map PNG as uint8 ``[H, W]`` of label values (palette PNGs give their indices).

    Colour masks are refused unless all three channels are equal: a label map stores one
    integer per pixel, not a colour.
    """
    path = Path(path)
    img = _open_png(path)
    if img.mode in _GRAY_MODES:
        arr = np.asarray(img)  # [H, W]
    elif img.mode in ("RGB", "RGBA", "LA"):
        rgb = np.asarray(img)[..., : 3 if img.mode != "LA" else 1]  # [H, W, C]
        if not (rgb == rgb[..., :1]).all():
            raise InputError(
                f"{path}: mask is a colour image (mode {img.mode}); label masks must be "
                "single-channel PNGs whose pixel values are label values"
            )
        arr = rgb[..., 0]
    else:
        raise InputError(f"{path}: unsupported mask image mode {img.mode!r}")
    return to_label_array(arr, path)


def to_label_array(arr: np.ndarray, path: str | Path) -> np.ndarray:
    """Check that ``arr`` holds integer label values 0..255 and return it as uint8."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not (arr == np.rint(arr)).all():
            raise InputError(f"{path}: mask holds non-integer values; label maps must be integers")
    elif arr.dtype.kind not in "uib":
        raise InputError(f"{path}: mask has unsupported dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        bad = sorted({int(v) for v in np.unique(arr) if v < 0 or v > 255})[:10]
        raise InputError(f"{path}: mask values {bad} are outside 0..255")
    return arr.astype(np.uint8)


def to_uint8_image(arr: np.ndarray) -> np.ndarray:
    """Gray levels as uint8: 0..255 integers are kept, anything else is min-max scaled."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    if arr.size and arr.min() >= 0 and arr.max() <= 255 and (arr == np.rint(arr)).all():
        return arr.astype(np.uint8)
    lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def read_medical_2d(path: str | Path) -> np.ndarray:
    """A 2-D medical image (``.mhd``/``.raw``, ``.nii``, ``.nii.gz``) as ``[H, W]``, upright.

    SimpleITK's ``GetArrayFromImage`` returns the buffer in ``[z, y, x]`` order, i.e. rows are
    the image y axis, which is how CAMUS images are displayed (apex at the top). A singleton
    z axis (the CAMUS ``.mhd`` files declare ``NDims = 3`` with depth 1) is dropped.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.suffix.lower() == ".mhd":
        _check_mhd_data_file(path)
    try:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError:
        raise InputError(
            f"{path}: cannot read image (corrupt, truncated or unsupported file)"
        ) from None
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(f"{path}: expected a 2-D image, found shape {tuple(arr.shape)}")
    return arr


def _check_mhd_data_file(path: Path) -> None:
    """A MetaImage header names its pixel file; say so plainly when that file is missing."""
    try:
        header = path.read_text(errors="replace").splitlines()
    except OSError as err:
        raise InputError(f"{path}: cannot read header ({err.strerror})") from None
    for line in header:
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile":
            name = value.strip()
            plain = name and name not in ("LOCAL", "LIST") and "%" not in name
            if plain and not (path.parent / name).is_file():
                raise InputError(f"{path}: its data file {name} is missing")
