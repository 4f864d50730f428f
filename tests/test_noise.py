"""Counter-based noise: frame i's noise depends only on (seed, i, step), so batch composition,
order and offset change nothing, including stochastic sampler outputs."""

from __future__ import annotations

import pytest
import torch

from tte2tee_fast.diffusion import NoiseSchedule, NoiseSource, frame_noise, get_sampler
from tte2tee_fast.errors import InputError

SHAPE = (2, 8, 8)
SCHED = NoiseSchedule.cosine(1000)
BATCH_A = [3, 0, 9, 5]  # batch 4
BATCH_B = [12, 5, 7, 9, 1, 3, 0]  # batch 7: other order and offsets, frames 0, 3, 5, 9 shared


def _eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth nonlinear per-row network (row-wise: no cross-batch mixing)."""
    tt = t.view(-1, 1, 1, 1).to(x.dtype) / 1000
    return torch.tanh(0.8 * x + tt) * (1 - 0.3 * tt)


def test_frame_noise_is_batch_independent():
    a = frame_noise(7, torch.tensor(BATCH_A), SHAPE, step=4)
    b = frame_noise(7, torch.tensor(BATCH_B), SHAPE, step=4)
    for f in (0, 3, 5, 9):
        assert torch.equal(a[BATCH_A.index(f)], b[BATCH_B.index(f)])
    single = frame_noise(7, [9], SHAPE, step=4)
    assert torch.equal(single[0], a[BATCH_A.index(9)])


def test_frame_noise_varies_with_seed_frame_and_step():
    base = frame_noise(7, [3], SHAPE, step=2)
    for other in (
        frame_noise(8, [3], SHAPE, 2),
        frame_noise(7, [4], SHAPE, 2),
        frame_noise(7, [3], SHAPE, 3),
    ):
        assert not torch.allclose(base, other)
    assert not torch.allclose(frame_noise(7, [3], SHAPE), frame_noise(7, [3], SHAPE, step=0))


def test_frame_noise_is_standard_normal_and_dtype_independent():
    z = frame_noise(1, list(range(64)), (32, 32), step=0)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    # one row is uncorrelated with its neighbour
    assert abs(float((z[0] * z[1]).mean())) < 0.05
    z64 = frame_noise(1, [0, 1], (32, 32), step=0, dtype=torch.float64)
    assert z64.dtype == torch.float64 and torch.equal(z64.float(), z[:2])


@pytest.mark.parametrize(
    ("name", "opts"), [("ddpm", {}), ("dpmpp_2m_sde", {}), ("ddim", {"eta": 1.0})]
)
def test_stochastic_sampler_output_is_batch_independent(name, opts):
    ts = SCHED.timesteps(12, "trailing")
    outs = {}
    for batch in (BATCH_A, BATCH_B):
        src = NoiseSource(11, torch.tensor(batch))
        x_T = src.initial(SHAPE, dtype=torch.float64)
        out = get_sampler(name)(_eps, x_T, SCHED, ts, noise=src, **opts)
        outs[len(batch)] = {f: out[k] for k, f in enumerate(batch)}
    for f in (0, 3, 5, 9):
        torch.testing.assert_close(outs[4][f], outs[7][f], rtol=1e-12, atol=1e-12)
    # and the noise really matters: another seed changes the output
    src = NoiseSource(12, torch.tensor(BATCH_A))
    other = get_sampler(name)(
        _eps,
        NoiseSource(11, BATCH_A).initial(SHAPE, dtype=torch.float64),
        SCHED,
        ts,
        noise=src,
        **opts,
    )
    assert not torch.allclose(other[0], outs[4][BATCH_A[0]])


def test_noise_source_checks_batch_and_indices():
    src = NoiseSource(0, [1, 2])
    with pytest.raises(InputError, match="2 frames"):
        src(0, torch.zeros(3, 4))
    with pytest.raises(InputError, match=">= 0"):
        NoiseSource(0, [-1])
    with pytest.raises(InputError, match="1-D integer"):
        frame_noise(0, torch.tensor([0.5]), (2,))
