"""Triton kernels, installed as ``tte2tee_fast.kernels`` (pyproject's package-dir).

This folder sits at the top of the repository, so wherever the repository root is on
``sys.path`` (``python -m pytest``, ``python -c`` or a REPL started there) it is also found
as the top-level name ``kernels``: the name of Hugging Face's PyPI package, which
transformers >= 5.25 requires and imports (diffusers -> peft -> transformers). Imported
under that name, this file hands the import over to the installed package, so running from
the repository root behaves as running anywhere else.
"""

from __future__ import annotations


def _hand_over_to_installed() -> None:
    """Load the installed top-level ``kernels`` in place of this folder."""
    import importlib.machinery
    import importlib.util
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    path = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != root]
    spec = importlib.machinery.PathFinder.find_spec("kernels", path)
    if spec is None or spec.loader is None:
        raise ImportError(
            f"'import kernels' found tte2tee-fast's repository folder {root}/kernels (the "
            "repository root is on sys.path) and no installed 'kernels' package; the Triton "
            "kernels import as tte2tee_fast.kernels",
            name="kernels",
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module  # the import statement returns what sys.modules holds
    spec.loader.exec_module(module)


if __name__ == "kernels":
    _hand_over_to_installed()
