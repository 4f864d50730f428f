"""The backend interface (generate/backends.py): every backend takes raw label maps and returns
the eps of the merged torch model; the frame function is deterministic per frame index."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_adapter import make_adapter, micro_base

from tte2tee_fast.adapt.merge import merge_adapter
from tte2tee_fast.condition.maskr2 import builtin_spec, remap_one_hot
from tte2tee_fast.errors import InputError
from tte2tee_fast.generate import backends
from tte2tee_fast.generate.backends import FrameConfig, build_denoiser, build_frame_fn, resolve
from tte2tee_fast.models import save_model

pytestmark = pytest.mark.usefixtures("one_thread")
ENGINES = [b for b in ("ort", "openvino") if backends.available(b)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("backends")
    base = micro_base(3)
    save_model(base, root / "base")
    make_adapter(base, root / "lora", preset="mlp", rank=2)
    return root / "base", root / "lora"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TTE2TEE_CACHE", str(tmp_path / "cache"))


def _inputs(size: int = 32, b: int = 3):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(b, 1, size, size, generator=gen)
    t = torch.tensor([999, 500, 3][:b])
    labels = torch.randint(0, 6, (b, size, size), generator=gen)  # TEE values 0..5
    return x, t, labels


def _reference(folders, x, t, labels, g):
    from tte2tee_fast.models import load_model

    model = merge_adapter(load_model(folders[0]), folders[1]).eval()
    cond = remap_one_hot(labels, builtin_spec("tee->tte"))
    with torch.no_grad():
        eps_c = model(x, t, cond)
        eps_u = model(x, t, torch.zeros_like(cond))
    return eps_u + g * (eps_c - eps_u)


@pytest.mark.parametrize("backend", ["torch", *ENGINES])
@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_every_backend_gives_the_merged_models_eps(folders, backend, guidance) -> None:
    x, t, labels = _inputs()
    den = build_denoiser(str(folders[0]), str(folders[1]), backend, "fp32", batch=4)
    want = _reference(folders, x, t, labels, guidance)
    got = den(x, t, labels, guidance)
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 1e-4, err
    assert den.info["backend"] == backend and den.spec.name == "tee->tte"


def test_resolve_and_its_errors(monkeypatch) -> None:
    with pytest.raises(InputError, match="unknown backend"):
        resolve("tpu", "fp32")
    with pytest.raises(InputError, match="runs precisions"):
        resolve("ort", "bf16")
    monkeypatch.setattr(backends, "available", lambda b: b == "torch")
    assert resolve("auto", "auto") == ("torch", "bf16" if backends.cpu_has_bf16() else "fp32")
    with pytest.raises(InputError, match="pip install openvino"):
        resolve("openvino", "fp32")
    assert resolve("auto", "auto", device="cuda")[0] == "torch"


@pytest.mark.skipif(not ENGINES, reason="neither onnxruntime nor openvino installed")
def test_engine_from_another_model_is_refused(folders, tmp_path) -> None:
    den = build_denoiser(str(folders[0]), str(folders[1]), ENGINES[0], "fp32", batch=2)
    other = tmp_path / "other"
    save_model(micro_base(9), other)
    with pytest.raises(InputError, match="exported from base model"):
        build_denoiser(str(other), None, ENGINES[0], "fp32", engine=den.info["engine"])


@pytest.mark.parametrize("backend", ["torch", *ENGINES[:1]])
def test_frame_fn_is_a_function_of_the_frame_index(folders, backend) -> None:
    cfg = FrameConfig(
        model=str(folders[0]), adapter=str(folders[1]), steps=3, batch_size=4, backend=backend
    )
    fn = build_frame_fn(cfg)
    _, _, labels = _inputs(b=3)
    masks = np.concatenate([labels.numpy(), labels.numpy()[:2]]).astype(np.uint8)  # [5, S, S]
    frames = np.array([7, 3, 11, 0, 5])
    together = fn(masks, frames)
    apart = np.concatenate([fn(masks[i : i + 1], frames[i : i + 1]) for i in range(5)])
    assert together.dtype == np.uint8 and together.shape == (5, 32, 32)
    np.testing.assert_array_equal(together, apart)  # padding: the network batch never changes
    again = fn(masks[[2, 0]], frames[[2, 0]])
    np.testing.assert_array_equal(again, together[[2, 0]])
    assert not np.array_equal(together[0], fn(masks[:1], np.array([8]))[0])  # noise per frame
    with pytest.raises(InputError, match=r"values \[9\] are not in schema 'tee'"):
        fn(np.full((1, 32, 32), 9, np.uint8), np.array([0]))


@pytest.mark.parametrize("backend", ENGINES)
def test_sampled_frames_of_engines_equal_torch(folders, backend) -> None:
    """What ``tte2tee sample --backend ort|openvino`` draws equals ``--backend torch`` (same
    seed, masks and sampler) within 1e-3 relative."""
    from tte2tee_fast.generate.backends import sample_frames
    from tte2tee_fast.generate.sample import SampleConfig

    _, _, labels = _inputs(b=3)
    cfg = SampleConfig("unipc", 5, spacing="karras", t_min=10, t_max=979, seed=4, batch_size=2)
    frames = {
        b: sample_frames(build_denoiser(str(folders[0]), str(folders[1]), b, "fp32", batch=2),
                         labels, torch.arange(3), cfg)
        for b in ("torch", backend)
    }  # fmt: skip
    err = float((frames[backend] - frames["torch"]).abs().max() / frames["torch"].abs().max())
    assert err < 1e-3, err
