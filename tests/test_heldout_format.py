"""A held-out mask format through MaskR² (issue 15, item 7): TEE masks stored in the ``tee-alt``
value order (LV before LA, RV before RA) reach the same base channels through
``assets/maskr2/tee-alt.json`` and are scored through ``tee-alt-to-tee.json``. It is a pure
relabelling, so frames and fidelity must equal those of the original ``tee`` format exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import error_line, random_micro
from PIL import Image

from tte2tee_fast.cli import main
from tte2tee_fast.condition.maskr2 import builtin_spec, load_spec
from tte2tee_fast.data.phantom import case_seed, phantom_case
from tte2tee_fast.data.schemas import TEE, TEE_ALT, get_schema
from tte2tee_fast.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

SPECS = Path(__file__).resolve().parents[1] / "tte2tee_fast" / "assets" / "maskr2"
TO_BASE, TO_TEE, FROM_TEE = (
    SPECS / "tee-alt.json",
    SPECS / "tee-alt-to-tee.json",
    SPECS / "tee-to-tee-alt.json",
)


def to_alt(mask: np.ndarray) -> np.ndarray:
    """A tee mask in tee-alt values, by structure name (independent of the specs under test)."""
    lut = np.array([TEE_ALT.value_of(TEE.name_of(v)) for v in TEE.values], np.uint8)
    return lut[mask]


def write_set(root: Path, schema: str, cases, images: bool) -> Path:
    """``root/masks/*.png`` (+ ``images/`` when ``images``) and ``card.json`` naming ``schema``."""
    for sub in ("masks", "images") if images else ("masks",):
        (root / sub).mkdir(parents=True)
    for i, (image, mask) in enumerate(cases):
        Image.fromarray(mask).save(root / "masks" / f"case_{i:03d}.png")
        if images:
            Image.fromarray(image).save(root / "images" / f"case_{i:03d}.png")
    (root / "card.json").write_text(json.dumps({"schema": schema}))
    return root


def phantom_pairs(n: int, size: int, seed: int = 7):
    cases = [phantom_case("tee", None, size, case_seed(seed, i)) for i in range(n)]
    return [(c.image, c.mask) for c in cases]


def test_specs_are_a_pure_relabelling_of_the_tee_spec():
    tee = builtin_spec("tee->tte").lookup_table().numpy()  # [6] tee value -> base channel
    alt = load_spec(TO_BASE).lookup_table().numpy()  # [6] tee-alt value -> base channel
    back = load_spec(TO_TEE).lookup_table().numpy()  # [6] tee-alt value -> tee value
    forth = load_spec(FROM_TEE).lookup_table().numpy()  # [6] tee value -> tee-alt value
    values = np.array(TEE.values)
    assert get_schema("tee-alt") is TEE_ALT
    assert np.array_equal(forth, to_alt(values))
    assert np.array_equal(alt[forth], tee)  # the same base channel for every structure
    assert np.array_equal(back[forth], values)  # and back to the segmenter's order
    assert not np.array_equal(forth, values)  # it is another order


def test_heldout_format_through_its_spec_gives_the_same_frames(tmp_path):
    from tte2tee_fast.generate.backends import FrameConfig, FrameFn, build_denoiser
    from tte2tee_fast.generate.run import DatasetConfig, generate_dataset
    from tte2tee_fast.models import save_model

    model_dir = tmp_path / "micro"  # a tte base: 5 channels, as the packaged one
    save_model(random_micro(0).eval(), model_dir)
    masks = [m for _, m in phantom_pairs(5, 64)]
    tee = write_set(tmp_path / "tee", "tee", [(None, m) for m in masks], images=False)
    alt = write_set(tmp_path / "alt", "tee-alt", [(None, to_alt(m)) for m in masks], False)
    fc = FrameConfig(model=str(model_dir), adapter=None, steps=2, backend="torch", batch_size=2)

    def run(folder: Path, spec, out: str) -> Path:
        den = build_denoiser(str(model_dir), None, "torch", "fp32", batch=2, spec=spec)
        dataset = DatasetConfig(masks=str(folder), n=6, format="png", shard_size=4)
        generate_dataset(tmp_path / out, dataset, fc, frame_fn=FrameFn(den, fc), progress=False)
        return tmp_path / out

    a = run(tee, builtin_spec("tee->tte"), "gen-tee")
    # the held-out folder through the command line's --remap
    res = CliRunner().invoke(
        main,
        ["generate", "--no-progress", "--model", str(model_dir), "--adapter", "none",
         "--masks", str(alt), "--remap", str(TO_BASE), "--steps", "2", "--backend", "torch",
         "--precision", "fp32", "--batch-size", "2", "--n", "6", "--format", "png", "--shard-size", "4",
         "--out", str(tmp_path / "gen-alt")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    b = tmp_path / "gen-alt"
    images = sorted((a / "images").iterdir())
    assert len(images) == 6
    for path in images:  # byte-identical frames
        assert path.read_bytes() == (b / "images" / path.name).read_bytes(), path.name
        stored = np.array(Image.open(b / "masks" / path.name))  # kept in the held-out order
        assert np.array_equal(stored, to_alt(np.array(Image.open(a / "masks" / path.name))))
    assert json.loads((b / "card.json").read_text())["schema"] == "tee-alt"
    meta = json.loads(next((b / "meta").iterdir()).read_text())
    assert (meta["maskr2"], meta["schema"]) == ("tee-alt->tte", "tee-alt")
    with pytest.raises(InputError, match="'tee-alt' schema but the model"):  # no spec: refused
        den = build_denoiser(str(model_dir), None, "torch", "fp32", batch=2)
        generate_dataset(
            tmp_path / "no-spec",
            DatasetConfig(masks=str(alt), n=2, format="png"),
            fc,
            frame_fn=FrameFn(den, fc),
            progress=False,
        )


def test_fidelity_through_the_spec_equals_the_original_format(tmp_path):
    from tte2tee_fast.evaluate.fidelity import evaluate_fidelity

    pairs = phantom_pairs(4, 128)  # the packaged segmenter's size
    tee = write_set(tmp_path / "tee", "tee", pairs, images=True)
    alt = write_set(tmp_path / "alt", "tee-alt", [(i, to_alt(m)) for i, m in pairs], True)
    want = evaluate_fidelity(tee, n_boot=50)
    got = evaluate_fidelity(alt, n_boot=50, remap=str(TO_TEE))
    assert got["per_class"] == want["per_class"] and got["mean_dice"] == want["mean_dice"]
    assert (got["mask_schema"], got["remap"], got["schema"]) == ("tee-alt", "tee-alt->tee", "tee")
    assert want["mean_dice"]["mean"] > 0.8  # real phantom frames: a real score, not 0 == 0
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "fidelity",
            "--frames",
            str(alt),
            "--bootstrap",
            "50",
            "--remap",
            str(TO_TEE),
            "--json",
            str(tmp_path / "f.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "f.json").read_text())["per_class"] == want["per_class"]
    line = error_line(CliRunner().invoke(main, ["evaluate", "fidelity", "--frames", str(alt)]))
    assert "'tee-alt'" in line and "--remap" in line  # without the spec: one line, a hint
    wrong = CliRunner().invoke(
        main, ["evaluate", "fidelity", "--frames", str(tee), "--remap", str(TO_TEE)]
    )
    error_line(wrong, "frames are in schema 'tee'", "maps 'tee-alt' labels")


def test_spec_missing_a_heldout_label_fails_with_one_line(tmp_path):
    data = json.loads(TO_BASE.read_text())
    data["rules"][-1]["labels"] = ["rv"]  # ra left out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    expected = "labels ['ra'] of source schema 'tee-alt' are not mapped by any rule"
    with pytest.raises(InputError, match=re.escape(expected)):
        load_spec(bad)
    runner = CliRunner()
    sample = runner.invoke(
        main,
        [
            "sample",
            "--adapter",
            "phantom-tee",
            "--remap",
            str(bad),
            "--masks",
            "x",
            "--out",
            str(tmp_path / "s"),
        ],
    )
    error_line(sample, str(bad), expected)
    fidelity = runner.invoke(
        main, ["evaluate", "fidelity", "--frames", str(tmp_path), "--remap", str(bad)]
    )
    error_line(fidelity, str(bad), expected)
    assert not (tmp_path / "s").exists()
