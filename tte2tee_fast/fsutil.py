"""Atomic writes: a file or a folder is written under a temporary name beside its destination
and renamed into place when complete, so a crash never leaves a half-written output.

Temporary names are hidden (``.name...``) and unique per call (a random tag), so concurrent
writers never share one; whatever fails removes its temporary.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tte2tee_fast.errors import InputError


def _tag() -> str:
    return uuid.uuid4().hex[:8]


@contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path`` for the caller to write; on success it
    replaces ``path``, on error it is removed. The parent folder must exist."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{_tag()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with staged_file(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int = 2) -> None:
    """Write ``data`` as JSON (``indent``, one trailing newline) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


@contextmanager
def staged_folder(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a not-yet-existing temporary path beside ``dest``; the caller creates the folder
    there. On success it replaces ``dest`` (an existing ``dest`` is moved aside first and
    removed after the rename); on error nothing is left behind. Creates ``dest``'s parent;
    refuses a ``dest`` that exists and is not a folder."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise InputError(f"output {dest} exists and is not a folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tag = _tag()
    tmp = dest.parent / f".{dest.name}.tmp-{tag}"
    old = dest.parent / f".{dest.name}.old-{tag}"
    try:
        yield tmp
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
