"""Property tests: malformed masks, value maps, MaskR² specs and option sets thrown at the
generation entry points (>= 1,000 examples per run in total). Each either succeeds or raises
InputError (never another exception), and a refused run leaves no output behind."""

from __future__ import annotations

import json
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from test_generate_fakes import FakeFrameFn, fake_config

from tte2tee_fast.condition.maskr2 import MaskR2Spec
from tte2tee_fast.data.imageio import to_label_array
from tte2tee_fast.data.schemas import TEE
from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.distribute import parse_split, split_from_env
from tte2tee_fast.generate.run import DatasetConfig, generate_dataset
from tte2tee_fast.generate.sources import check_masks, fit_mask, open_mask_source

FAST = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
json_scalars = st.none() | st.booleans() | st.integers(-300, 300) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=12,
)


def outcome(fn, *args, **kwargs):
    """``"ok"`` or ``"refused"``; any exception other than InputError fails the test."""
    try:
        fn(*args, **kwargs)
    except InputError as err:
        assert str(err) and "\n" not in str(err).strip(), repr(err)
        return "refused"
    return "ok"


mask_arrays = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.int16, np.int64, np.float32, np.float64, np.bool_]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40),
    elements={"allow_nan": True, "allow_infinity": True},
)


@FAST
@given(arr=mask_arrays, size=st.integers(1, 48))
def test_malformed_mask_arrays_are_fitted_or_refused(arr, size):
    def entry():
        mask = to_label_array(arr, "mask")
        out = fit_mask(mask, size, fill=0)
        TEE.validate(out, source="mask")
        assert set(np.unique(out)) <= set(np.unique(mask)) | {0}

    outcome(entry)


value_maps = st.dictionaries(
    st.one_of(st.integers(-5, 300).map(str), st.text(max_size=4)),
    st.one_of(st.sampled_from(TEE.names), st.integers(-2, 8), st.text(max_size=5), st.none()),
    max_size=7,
)


@FAST
@given(vmap=value_maps, stored=st.lists(st.integers(0, 12), min_size=1, max_size=6))
def test_value_maps_on_a_mask_folder(tmp_path_factory, vmap, stored):
    root = tmp_path_factory.mktemp("vm")
    Image.fromarray(np.array([stored], np.uint8)).save(root / "m.png")

    def entry():
        src = open_mask_source(str(root), size=16, schema="tee", value_map=vmap)
        check_masks(src)
        assert set(np.unique(src.mask(0)[0])) <= set(TEE.values)

    outcome(entry)


rules = st.fixed_dictionaries(
    {
        "op": st.sampled_from(["identity", "reduce", "repurpose", "swap"]),
        "labels": st.lists(st.sampled_from([*TEE.names, "lv_myocardium", "x"]), max_size=3),
        "channel": st.one_of(st.integers(-1, 6), st.sampled_from(["la", "lv_cavity", "nope"])),
    }
)
specs = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "source_schema": st.sampled_from(["tee", "tte", "camus", "mri"]),
            "rules": st.lists(rules, max_size=7),
        },
        optional={"target_schema": st.sampled_from(["tte", "tee"]), "name": json_scalars},
    ),
)


@FAST
@given(data=specs)
def test_maskr2_spec_json(data):
    def entry():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec = MaskR2Spec.from_json(data, source="spec.json")
        MaskR2Spec.from_json(json.loads(json.dumps(spec.to_json())))  # round trip

    outcome(entry)


@FAST
@given(
    text=st.text(max_size=8),
    env=st.dictionaries(
        st.sampled_from(
            [
                "RANK",
                "WORLD_SIZE",
                "SLURM_ARRAY_TASK_ID",
                "SLURM_ARRAY_TASK_COUNT",
                "SLURM_ARRAY_TASK_MIN",
                "JOB_COMPLETION_INDEX",
                "JOB_COMPLETIONS",
            ]
        ),
        st.one_of(st.integers(-3, 9).map(str), st.text(max_size=3)),
        max_size=4,
    ),
)
def test_split_options_and_launcher_variables(text, env):
    outcome(parse_split, text)
    outcome(split_from_env, env)


# a valid option set, then (most of the time) one option broken: both outcomes are exercised
valid_options = st.fixed_dictionaries(
    {
        "masks": st.sampled_from(["phantom:tee", "phantom:tee:me4c"]),
        "n": st.integers(1, 5),
        "format": st.sampled_from(["wds", "png", "npz"]),
        "shard_size": st.integers(1, 4),
        "augment": st.booleans(),
        "schema": st.none(),
        "batch_size": st.integers(1, 4),
    }
)
bad_values = {
    "masks": st.sampled_from(["phantom:tte", "phantom:", "phantom:tee:a4c", "", "nowhere"]),
    "n": st.sampled_from([0, -1, 2.5, "3"]),
    "format": st.sampled_from(["zip", "", "WDS"]),
    "shard_size": st.sampled_from([0, -2, 1.5]),
    "schema": st.sampled_from(["tee", "mri"]),
    "batch_size": st.sampled_from([0, -3]),
}


@SLOW
@given(
    opts=valid_options,
    broken=st.sampled_from([None, None, *bad_values]),
    data=st.data(),
    size=st.sampled_from([16, 32]),
)
def test_option_sets_into_generate_leave_no_partial_output(
    tmp_path_factory, opts, broken, data, size
):
    out = tmp_path_factory.mktemp("gen") / "out"
    if broken is not None:
        opts = {**opts, broken: data.draw(bad_values[broken])}
    batch = opts.pop("batch_size")

    def entry():
        dataset = DatasetConfig(**opts)
        generate_dataset(
            out,
            dataset,
            fake_config(batch_size=batch),
            frame_fn=FakeFrameFn(size=size),
            progress=False,
            split=parse_split("0/1"),
        )

    result = outcome(entry)
    if result == "refused":
        assert not out.exists()
    else:
        assert (out / "dataset.json").is_file()
    if broken is None:
        assert result == "ok"
