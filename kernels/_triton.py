"""Shared helpers for the Triton kernels: lazy import, dispatch, interpreter mode.

Nothing here imports triton at import time, so a CPU-only install without triton works.

Dispatch rule (every kernel's public function follows it)::

    use_triton(*tensors, force=None)
      force=True   run the Triton kernel: tensors on CUDA, or on the CPU under TRITON_INTERPRET=1
                   (the tests); anything else is an error, never a silent fallback.
      force=False  run the pure-torch reference.
      force=None   the environment variable TTE2TEE_TRITON decides: "1" as force=True, "0" as
                   force=False, unset / "auto": Triton when every tensor is on CUDA and triton
                   imports, the reference otherwise.

Interpreter mode (checked on triton 3.9): ``@triton.jit`` asks ``triton.knobs.runtime.interpret``
(which reads ``TRITON_INTERPRET`` from the environment on each access) when the decorator runs,
and makes either a compiled ``JITFunction`` or an ``InterpretedFunction``. Two consequences:

* our kernels are built on first use by :func:`lazy_kernel` and cached per mode, so setting
  ``TRITON_INTERPRET=1`` any time before a launch is enough for *their* bodies;
* triton's own jitted helpers in ``triton.language.standard`` (``tl.max``, ``tl.sum``,
  ``tl.cdiv``, ``tl.zeros_like``, ``tl.softmax`` ...) were decorated when triton was first
  imported. If that import happened without ``TRITON_INTERPRET=1``, calling them from an
  interpreted kernel fails ("Cannot call @triton.jit'd outside of the scope of a kernel").
  A kernel that uses only builtins (``tl.load``, ``tl.store``, ``tl.where``, ``tl.atomic_*``,
  ``tl.arange``, ``tl.dot`` ...) works in-process whatever the import order; one that needs a
  standard helper must have ``TRITON_INTERPRET=1`` set before triton's first import (a
  subprocess, or the environment of the pytest run). :func:`interpreter_complete` tells which.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")

ENV_DISPATCH = "TTE2TEE_TRITON"


@functools.cache
def triton_available() -> bool:
    """True when triton is installed and imports."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install counts as absent
        return False
    return True


def interpret_mode() -> bool:
    """True when kernels decorated now run in triton's interpreter (TRITON_INTERPRET=1)."""
    if "triton" in sys.modules:  # the knob, so an explicit knobs override is honoured too
        knobs = getattr(sys.modules["triton"], "knobs", None)
        if knobs is not None:
            return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreter_complete() -> bool:
    """True when triton's standard jitted helpers (``tl.max`` ...) are interpreter functions,
    i.e. triton was first imported with TRITON_INTERPRET=1 (see the module docstring)."""
    if not triton_available():
        return False
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.max, InterpretedFunction)


def _env_force() -> bool | None:
    value = os.environ.get(ENV_DISPATCH, "auto").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError(f"{ENV_DISPATCH}={value!r}: use 1, 0 or auto")


def use_triton(*tensors: torch.Tensor, force: bool | None = None) -> bool:
    """Whether a kernel should run its Triton path on ``tensors`` (see the module docstring)."""
    if force is None:
        force = _env_force()
    on_cuda = all(t.is_cuda for t in tensors)
    if force is False:
        return False
    if force is None:
        return on_cuda and triton_available()
    if not triton_available():
        raise RuntimeError("Triton was requested but triton is not installed")
    if not (on_cuda or interpret_mode()):
        raise RuntimeError(
            "Triton was requested for CPU tensors: set TRITON_INTERPRET=1 to run the kernel "
            "in triton's interpreter, or move the tensors to a CUDA device"
        )
    return True


def lazy_kernel(build: Callable[[], T]) -> Callable[[], T]:
    """Wrap ``build`` (which imports triton and returns the jitted kernel) to run on first use.

    The result is cached per interpreter mode, because ``@triton.jit`` decides at decoration
    time whether it makes a compiled or an interpreted function.
    """
    cache: dict[bool, T] = {}

    @functools.wraps(build)
    def get() -> T:
        mode = interpret_mode()
        if mode not in cache:
            cache[mode] = build()
        return cache[mode]

    return get


def maybe_autotune(configs: list[Any], key: list[str]) -> Callable[[T], Any]:
    """``triton.autotune(configs, key)`` when compiling; the identity under the interpreter,
    where timing configs is slow and meaningless (launch with :func:`launch_meta` then)."""
    import triton

    if interpret_mode():
        return lambda fn: fn
    return triton.autotune(configs=configs, key=key)


def launch_meta(default: dict[str, Any]) -> dict[str, Any]:
    """Meta-parameters to pass at launch: ``default`` under the interpreter, none when
    compiling (the autotuner supplies them)."""
    return dict(default) if interpret_mode() else {}


def require_complete_interpreter(kernel: str) -> None:
    """Raise a clear error when ``kernel`` (which calls ``tl.sum`` / ``tl.min`` ...) is about to
    run in an interpreter whose standard helpers were jitted in compiled mode (module docstring).
    Does nothing when compiling for a GPU."""
    if interpret_mode() and not interpreter_complete():
        raise RuntimeError(
            f"the {kernel} kernel uses triton reductions, which run in the interpreter only when "
            "TRITON_INTERPRET=1 is set before triton is first imported (set it in the "
            "environment of the process; tests/conftest.py does so on CPU-only machines)"
        )
