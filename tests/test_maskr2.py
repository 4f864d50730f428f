"""MaskR² spec, validation and the torch remap, against a numpy one-hot built from the rules."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from tte2tee_fast.condition.maskr2 import (
    BUILTIN_SPECS,
    MaskR2Remap,
    MaskR2Spec,
    builtin_spec,
    load_spec,
    remap_one_hot,
)
from tte2tee_fast.data.schemas import TEE, TTE
from tte2tee_fast.errors import InputError

INT_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


def numpy_one_hot(labels: np.ndarray, spec_json: dict) -> np.ndarray:
    """Independent reference: walk the JSON rules, never the lookup table."""
    src = {"tee": TEE, "tte": TTE}[spec_json["source_schema"]]
    tgt = {"tee": TEE, "tte": TTE}[spec_json.get("target_schema", "tte")]
    out = np.zeros((labels.shape[0], tgt.num_labels, *labels.shape[1:]), dtype=np.float64)
    for rule in spec_json["rules"]:
        ch = rule["channel"]
        ch = ch if isinstance(ch, int) else tgt.names.index(ch)
        for name in rule["labels"]:
            value = src.values[src.names.index(name)]
            out[:, ch][labels.astype(np.int64) == value] = 1.0
    return out


def _random_labels(dtype: torch.dtype, gen: torch.Generator, shape=(3, 17, 23)) -> torch.Tensor:
    lo = 0 if dtype == torch.uint8 else -4  # negatives where the dtype has them
    hi = 256 if dtype == torch.uint8 else 12  # values past the table too
    x = torch.randint(lo, hi, shape, generator=gen)
    x[0] = torch.randint(0, 6, shape[1:], generator=gen)  # one image fully valid
    return x.to(dtype)


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("name", ["tee->tte", "tte->tte"])
def test_remap_matches_numpy_rules(dtype: torch.dtype, name: str) -> None:
    spec = builtin_spec(name)
    gen = torch.Generator().manual_seed(INT_DTYPES.index(dtype) + 100 * len(name))
    labels = _random_labels(dtype, gen)
    out = remap_one_hot(labels, spec)  # [B, C, H, W]
    assert out.dtype == torch.float32 and out.shape == (3, 5, 17, 23)
    np.testing.assert_array_equal(out.numpy(), numpy_one_hot(labels.numpy(), spec.to_json()))
    # valid pixels light exactly one channel, invalid ones none
    valid = np.isin(labels.numpy().astype(np.int64), spec.source.values)
    np.testing.assert_array_equal(out.sum(1).numpy(), valid.astype(np.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_remap_output_dtype(dtype: torch.dtype) -> None:
    spec = builtin_spec("tee->tte")
    labels = torch.randint(0, 6, (2, 5, 7))
    out = remap_one_hot(labels, spec, dtype=dtype)
    assert out.dtype == dtype
    np.testing.assert_array_equal(
        out.float().numpy(), numpy_one_hot(labels.numpy(), spec.to_json())
    )


def test_builtin_tee_to_tte_repurposes_right_heart_only() -> None:
    spec = builtin_spec("tee->tte")
    myo = TTE.value_of("lv_myocardium")
    assert myo == 3
    lut = spec.lookup_table()
    assert [TEE.names[v] for v in range(len(lut)) if lut[v] == myo] == ["ra", "rv"]
    assert spec.num_channels == 5
    assert spec.channel_of("lv") == TTE.value_of("lv_cavity")
    assert spec.channel_of("la") == TTE.value_of("la")
    assert [r.op for r in spec.rules if r.channel == myo] == ["repurpose"]


def test_identity_spec_and_builtin_names() -> None:
    spec = MaskR2Spec.identity(TTE)
    assert torch.equal(spec.lookup_table(), torch.tensor(TTE.values))
    assert load_spec("tte->tte") == spec == builtin_spec("tte->tte")
    assert "tee->tte" in BUILTIN_SPECS


def test_json_round_trip(tmp_path) -> None:
    spec = builtin_spec("tee->tte")
    assert MaskR2Spec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    path = tmp_path / "spec.json"
    spec.save(path)
    assert load_spec(path) == spec
    assert not list(tmp_path.glob("*.tmp"))


def test_integer_channels_equal_names() -> None:
    data = json.loads(json.dumps(BUILTIN_SPECS["tee->tte"]))
    for rule in data["rules"]:
        rule["channel"] = TTE.value_of(rule["channel"])
    assert MaskR2Spec.from_json(data) == builtin_spec("tee->tte")


def _tee_spec(**changes) -> dict:
    data = json.loads(json.dumps(BUILTIN_SPECS["tee->tte"]))
    data.update(changes)
    return data


def _rules(*rules) -> list[dict]:
    base = [
        {"op": "identity", "labels": ["outside"], "channel": "outside"},
        {"op": "identity", "labels": ["background"], "channel": "background"},
        {"op": "identity", "labels": ["la"], "channel": "la"},
        {"op": "identity", "labels": ["lv"], "channel": "lv_cavity"},
    ]
    return base + list(rules)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (_tee_spec(rules=_rules({"op": "repurpose", "labels": ["ra"], "channel": 3})), "['rv']"),
        (
            _tee_spec(
                rules=_rules({"op": "repurpose", "labels": ["ra", "rv", "la"], "channel": 3})
            ),
            "label 'la' is mapped twice (rules 2 and 4)",
        ),
        (
            _tee_spec(
                rules=_rules({"op": "repurpose", "labels": ["ra", "rv", "ao"], "channel": 3})
            ),
            "label 'ao' is not in source schema 'tee'",
        ),
        (
            _tee_spec(rules=_rules({"op": "repurpose", "labels": ["ra", "rv"], "channel": 7})),
            "channel 7 is out of range",
        ),
        (
            _tee_spec(rules=_rules({"op": "repurpose", "labels": ["ra", "rv"], "channel": -1})),
            "channel -1 is out of range",
        ),
        (
            _tee_spec(rules=_rules({"op": "repurpose", "labels": ["ra", "rv"], "channel": "rv"})),
            "channel 'rv' is not a label of target schema 'tte'",
        ),
        (
            _tee_spec(
                rules=_rules(
                    {"op": "reduce", "labels": ["ra"], "channel": 3},
                    {"op": "repurpose", "labels": ["rv"], "channel": 3},
                )
            ),
            "rule 4 (reduce ra): reduce merges at least 2 labels",
        ),
        (
            _tee_spec(rules=_rules({"op": "identity", "labels": ["ra", "rv"], "channel": 3})),
            "identity maps exactly one label",
        ),
        (
            _tee_spec(rules=_rules({"op": "merge", "labels": ["ra", "rv"], "channel": 3})),
            "unknown op 'merge'",
        ),
        (_tee_spec(source_schema="mri"), "unknown label schema 'mri'"),
        (_tee_spec(rule=[]), "unknown keys ['rule']"),
        ({"rules": []}, "missing key 'source_schema'"),
        (_tee_spec(rules=_rules({"op": "repurpose", "labels": "ra", "channel": 3})), "labels must"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_validation_errors(data, needle: str) -> None:
    with pytest.raises(InputError) as err:
        MaskR2Spec.from_json(data, source="my_spec.json")
    assert needle in str(err.value)
    assert "my_spec.json" in str(err.value)


def test_malformed_json_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "broken.json"
    path.write_text(
        '{\n  "source_schema": "tee",\n  "rules": [\n    {"op": "identity",,}\n  ]\n}\n'
    )
    with pytest.raises(InputError, match=r"broken\.json: invalid JSON at line 4"):
        load_spec(path)


def test_missing_file_or_unknown_builtin(tmp_path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_spec(tmp_path / "nope.json")
    with pytest.raises(InputError, match="unknown built-in MaskR² spec 'camus->tte'"):
        builtin_spec("camus->tte")


def test_repurpose_onto_identity_channel_warns() -> None:
    data = _tee_spec(rules=_rules({"op": "repurpose", "labels": ["ra", "rv"], "channel": "la"}))
    with pytest.warns(UserWarning, match=r"repurposes channel 4 \(la\)"):
        spec = MaskR2Spec.from_json(data)
    assert spec.channel_of("ra") == spec.channel_of("la") == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        builtin_spec("tee->tte")  # the built-in one does not warn


def test_check_labels_names_unknown_values() -> None:
    spec = builtin_spec("tee->tte")
    labels = torch.tensor([[[0, 1, 5], [9, -2, 3]]], dtype=torch.int16)
    with pytest.raises(InputError, match=r"frame 7: values \[-2, 9\] are not in schema 'tee'"):
        spec.check_labels(labels, source="frame 7")
    spec.check_labels(labels.clamp(0, 5))
    spec.check_labels(np.array([[0, 4]]))


def test_remap_rejects_bad_labels() -> None:
    spec = builtin_spec("tee->tte")
    with pytest.raises(InputError, match="integer tensor"):
        remap_one_hot(torch.zeros(1, 4, 4), spec)
    with pytest.raises(InputError, match=r"\[B, H, W\]"):
        remap_one_hot(torch.zeros(4, 4, dtype=torch.long), spec)


def test_module_and_onnx_export_match_torch() -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    spec = builtin_spec("tee->tte")
    module = MaskR2Remap(spec).eval()
    x = torch.randint(-3, 9, (2, 7, 9))
    assert torch.equal(module(x), remap_one_hot(x, spec))
    program = torch.onnx.export(
        module, (x,), dynamo=True, opset_version=18, dynamic_shapes=({0: "b", 1: "h", 2: "w"},)
    )
    session = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    y = torch.randint(-3, 9, (3, 11, 5))  # another shape: the axes are dynamic
    got = session.run(None, {session.get_inputs()[0].name: y.numpy()})[0]
    np.testing.assert_array_equal(got, numpy_one_hot(y.numpy(), spec.to_json()))
