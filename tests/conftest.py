"""Test-session setup shared by every test file.

On a machine without CUDA the Triton kernels are tested in triton's interpreter. Triton 3.9
decides interpreted-or-compiled when ``@triton.jit`` decorates a function, and its own helpers
(``tl.sum``, ``tl.max``, ``tl.cdiv`` ...) are decorated when triton is first imported, so
``TRITON_INTERPRET=1`` must be in the environment before that import for kernels that use them
(see ``kernels/_triton.py``). pytest imports this file before any test module, so setting it
here covers the whole run; an explicit value in the environment wins.
"""

import os
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# engines exported on first use (generate/backends.py) go to a cache of this run only, so no
# test reuses an engine a previous run (or the user) left behind
os.environ.setdefault("TTE2TEE_CACHE", tempfile.mkdtemp(prefix="tte2tee-cache-"))

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module (``pytestmark = pytest.mark.usefixtures(...)``):
    micro-model tensors are tiny, and OpenMP barrier stalls make them up to 100x slower on a
    busy 2-core machine. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
