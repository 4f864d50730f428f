"""Split the shard list between runners: ``--shard i/N`` or the launcher's variables.

Runner ``i`` of ``N`` owns the shards ``s`` with ``s % N == i``: a pure partition, so the union
of the ``N`` runs is the shard list of one run, and each shard's bytes do not depend on who
wrote it. Without ``--shard`` the launcher's variables are read in this fixed order (the first
complete pair wins, and the run prints which one it used):

1. SLURM job arrays: ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT`` (the id is taken
   relative to ``SLURM_ARRAY_TASK_MIN`` when set, so ``--array=1-8`` works);
2. torchrun / torch.distributed: ``RANK`` / ``WORLD_SIZE``;
3. Kubernetes indexed jobs: ``JOB_COMPLETION_INDEX`` with the count in ``JOB_COMPLETIONS``
   (Kubernetes sets only the index: put ``spec.completions`` into ``JOB_COMPLETIONS`` in the pod
   template).

With none of them, one runner owns every shard (``0/1``).

>>> parse_split("1/4")
Split(index=1, count=4, origin='--shard 1/4')
>>> [s for s in range(10) if Split(1, 4, "").owns(s)]
[1, 5, 9]
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from tte2tee_fast.errors import InputError

_SPLIT = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_LAUNCHERS = (
    ("SLURM array", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"),
    ("torchrun", "RANK", "WORLD_SIZE"),
    ("Kubernetes indexed job", "JOB_COMPLETION_INDEX", "JOB_COMPLETIONS"),
)


@dataclass(frozen=True)
class Split:
    """Runner ``index`` of ``count``; ``origin`` says where it came from."""

    index: int
    count: int
    origin: str

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise InputError(
                f"shard split {self.index}/{self.count} ({self.origin}): need 0 <= i < N"
            )

    def owns(self, shard: int) -> bool:
        return shard % self.count == self.index

    @property
    def text(self) -> str:
        return f"{self.index}/{self.count}"


def parse_split(text: str) -> Split:
    """``"i/N"`` -> :class:`Split`; anything else is an :class:`InputError`."""
    m = _SPLIT.match(str(text))
    if not m:
        raise InputError(f"--shard {text!r}: expected i/N with integers, e.g. 0/4")
    return Split(int(m.group(1)), int(m.group(2)), f"--shard {m.group(1)}/{m.group(2)}")


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise InputError(f"environment variable {name}={env[name]!r} is not an integer") from None


def split_from_env(env: Mapping[str, str] | None = None) -> Split:
    """The split the launcher's variables describe (see the module docstring), else ``0/1``."""
    env = os.environ if env is None else env
    for launcher, index_var, count_var in _LAUNCHERS:
        if index_var not in env:
            continue
        if count_var not in env:
            raise InputError(
                f"{index_var} is set but {count_var} is not: set it to the number of tasks "
                f"({launcher}), or pass --shard i/N"
            )
        index, count = _int(env, index_var), _int(env, count_var)
        if index_var == "SLURM_ARRAY_TASK_ID" and "SLURM_ARRAY_TASK_MIN" in env:
            index -= _int(env, "SLURM_ARRAY_TASK_MIN")
        return Split(
            index, count, f"{launcher} ({index_var}={env[index_var]}, {count_var}={count})"
        )
    return Split(0, 1, "single runner (no --shard, no launcher variables)")


def resolve_split(text: str | None, env: Mapping[str, str] | None = None) -> Split:
    """``--shard`` when given, else the launcher's variables."""
    return parse_split(text) if text is not None else split_from_env(env)


def check_against_manifest(split: Split, records: Mapping[int, dict]) -> None:
    """Refuse a split into ``N`` runners when the manifest holds shards written by runners of
    another ``N`` (``split`` recorded per line). A single runner (``N = 1``) may always complete
    a dataset."""
    if split.count == 1:
        return
    for rec in records.values():
        other = rec.get("split")
        if not isinstance(other, str) or "/" not in other:
            continue
        count = other.split("/")[1]
        if count not in ("1", str(split.count)):
            raise InputError(
                f"split {split.text} disagrees with the manifest: {rec.get('name')} was written by "
                f"runner {other}; use the same N as the other runners (or no split to finish)"
            )
        index = int(other.split("/")[0])
        if count == str(split.count) and int(rec["shard"]) % split.count != index:
            raise InputError(
                f"split {split.text} disagrees with the manifest: {rec.get('name')} is recorded "
                f"for runner {other}, which does not own it"
            )
