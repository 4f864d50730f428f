"""How far a region mean over few frames wanders: the packaged TTE base with its 4-NFE plan
(``tte2tee generate``'s default frame function), region means of the first N frames against the
phantom's of the same masks, for N = 16 and 64 (mask and noise seed as ``bench fewstep``: 7).

    python benchmarks/probes/region_sample_size.py [--seed 7] [--batch-size 8]

Tenth session (benchmarks/RESULTS.md, 'Few-step benchmark at 64 frames'): LA 54.7 against 47.7
on the first 16 frames, 49.5 against 47.9 on 64.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from tte2tee_fast.bench.e2e import phantom_pairs
from tte2tee_fast.data.schemas import get_schema
from tte2tee_fast.evaluate.intensity import compare_regions
from tte2tee_fast.generate.backends import FrameConfig, build_frame_fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    fn = build_frame_fn(FrameConfig(adapter=None, batch_size=args.batch_size, seed=args.seed))
    masks, phantom = phantom_pairs("tte", fn.size, 64, args.seed)
    images = fn(masks, np.arange(64))
    for n in (16, 64):
        regions = compare_regions(images[:n], phantom[:n], masks[:n], get_schema("tte"))
        cells = ", ".join(
            f"{k} {v['generated']:.1f}/{v['reference']:.1f} ({100 * v['rel_diff']:.1f} %)"
            for k, v in regions.items()
            if k != "outside"
        )
        print(f"first {n} frames (generated/phantom): {cells}")


if __name__ == "__main__":
    main()
