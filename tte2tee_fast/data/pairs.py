"""Write phantom image/mask PNG pairs and a dataset card.

Layout (the contract the folder reader reads)::

    OUT/images/case_00000.png   8-bit gray image
    OUT/masks/case_00000.png    8-bit label values of the schema
    OUT/card.json               {"schema", "modality", "view", "size", "seed", "n",
                                 "generator", "cases": [{"name", "seed", "params"}, ...]}

Case ``i`` of a run with base seed ``S`` uses ``case_seed(S, i)``, so it is the same whatever
``n`` is. Every file is written to a temporary name and renamed, and ``card.json`` comes last:
a folder with a card is complete. Same arguments give byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

from tte2tee_fast import __version__
from tte2tee_fast.data.phantom import MAX_SIZE, MIN_SIZE, case_seed, check_view, phantom_case
from tte2tee_fast.data.preview import save_contact_sheet, save_png
from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import write_json_atomic


def case_name(index: int) -> str:
    return f"case_{index:05d}"


def write_pairs(
    out: str | Path,
    modality: str = "tte",
    view: str | None = None,
    n: int = 16,
    size: int = 256,
    seed: int = 0,
    preview: str | Path | None = None,
    preview_n: int = 16,
    progress: bool | None = None,
) -> Path:
    """Generate ``n`` phantom cases into ``out`` (see the module docstring); return ``out``.

    ``preview``: also write a contact sheet of the first ``preview_n`` cases to that PNG.
    ``progress``: tqdm bar (``None``: only on a terminal).
    """
    from tqdm import tqdm

    view = check_view(modality, view)
    if int(n) < 1:
        raise InputError(f"n must be at least 1, got {n}")
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise InputError(f"size {size} is out of range; use {MIN_SIZE}..{MAX_SIZE}")
    if int(preview_n) < 1:
        raise InputError(f"preview_n must be at least 1, got {preview_n}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    cases, shown = [], []
    disable = None if progress is None else not progress  # tqdm: None = only on a terminal
    for i in tqdm(range(int(n)), desc=f"phantom {modality}/{view}", unit="pair", disable=disable):
        k = case_seed(seed, i)
        case = phantom_case(modality, view, int(size), k)
        name = case_name(i)
        save_png(out / "images" / f"{name}.png", case.image)
        save_png(out / "masks" / f"{name}.png", case.mask)
        cases.append({"name": name, "seed": k, "params": case.params})
        if preview is not None and len(shown) < preview_n:
            shown.append((case.image, case.mask, case.schema))

    card = {
        "schema": modality,
        "modality": modality,
        "view": view,
        "size": int(size),
        "seed": int(seed),
        "n": int(n),
        "generator": f"tte2tee-fast phantom {__version__}",
        "cases": cases,
    }
    write_json_atomic(out / "card.json", card, indent=1)
    if preview is not None:
        images, masks, schemas = zip(*shown, strict=True)
        save_contact_sheet(preview, images, masks, schemas[0])
    return out
