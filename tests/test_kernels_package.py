"""kernels/__init__.py: run from the repository root, where the folder is also found as the
top-level name ``kernels`` (Hugging Face's package, which transformers >= 5.25 imports), the
import goes to the installed package and ``tte2tee_fast.kernels`` stays ours."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, *flags: str, env: dict[str, str] | None = None):
    env = {k: v for k, v in (env or os.environ).items() if k != "PYTHONSAFEPATH"}
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_models_import_from_the_repository_root() -> None:
    """The CI failure of transformers 5.25: diffusers -> peft -> transformers ran
    ``from kernels import CUDAProperties`` and got this folder."""
    code = (
        "import sys, tte2tee_fast.models, tte2tee_fast.kernels.ops as ops\n"
        "import tte2tee_fast.kernels as ours\n"
        "print(sys.path[0] == '', ours.__file__, ops.__name__, sys.modules.get('kernels'))\n"
    )
    res = _python(code)
    assert res.returncode == 0, res.stderr[-3000:]
    first, ours, ops, top = res.stdout.split(" ", 3)
    assert first == "True"  # the repository root really was on sys.path
    assert Path(ours) == ROOT / "kernels" / "__init__.py"
    assert ops == "tte2tee_fast.kernels.ops"
    assert str(ROOT / "kernels") not in top  # None, or the installed package


def test_top_level_name_goes_to_the_installed_package(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("MARK = 'installed'\n")
    (fake / "sub.py").write_text("VALUE = 7\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    code = "import kernels, kernels.sub\nprint(kernels.MARK, kernels.sub.VALUE, kernels.__file__)"
    res = _python(code, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    mark, value, file = res.stdout.split()
    assert (mark, value) == ("installed", "7")
    assert Path(file) == fake / "__init__.py"


def test_no_installed_package_is_one_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = _python("import kernels", "-S", env=env)  # -S: no site-packages, so none installed
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:"), res.stderr[-2000:]
    assert f"{ROOT}/kernels" in last and "tte2tee_fast.kernels" in last
