"""The packaged phantom-trained weights (the embedded default, no download).

``phantom-tte`` is the ``tiny`` base model trained on the TTE phantom by the command in the
README; ``phantom-tee`` is its LoRA adapter for the TEE phantom. They live under
``tte2tee_fast/assets/`` and are trained on phantoms only, not on real echo.
"""

from __future__ import annotations

from pathlib import Path

from tte2tee_fast.errors import InputError

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = "phantom-tte"
DEFAULT_ADAPTER = "phantom-tee"


def packaged_path(name: str) -> Path:
    """Folder of the packaged asset ``name``; InputError if this install does not carry it."""
    path = ASSETS / name
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        available = (
            sorted(p.name for p in ASSETS.iterdir() if p.is_dir()) if ASSETS.is_dir() else []
        )
        raise InputError(
            f"packaged weights {name!r} not found under {ASSETS} (available: {available or 'none'}); "
            "pass --model / --adapter, or train them with the command in the README"
        )
    return path


def resolve_asset(name_or_path: str | Path) -> Path:
    """A folder path as given, or the packaged asset of that name (``phantom-tte``,
    ``phantom-tee``) when no such path exists."""
    path = Path(name_or_path)
    if not path.exists() and (ASSETS / str(name_or_path)).is_dir():
        return packaged_path(str(name_or_path))
    return path


def resolve_model_path(model: str | Path | None) -> Path:
    """``model`` as a folder path or packaged name, or the packaged base model when None."""
    return packaged_path(DEFAULT_MODEL) if model is None else resolve_asset(model)


def packaged_plans() -> list[str]:
    """Names of the packaged learned step plans (``--sampler plan:NAME``)."""
    folder = ASSETS / "plans"
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def plan_file(name_or_path: str | Path) -> Path:
    """A plan file path as given, or the packaged plan of that name (``phantom-tee-nfe4``) when
    no such file exists."""
    path = Path(name_or_path)
    packaged = ASSETS / "plans" / f"{name_or_path}.json"
    return packaged if not path.exists() and packaged.is_file() else path
