"""``present_values`` (the label check of every batch) against ``np.unique``, property-based."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tte2tee_fast.data.schemas import get_schema, present_values
from tte2tee_fast.errors import InputError

INT_DTYPES = st.sampled_from(
    [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64, np.uint32, np.uint64]
)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(INT_DTYPES, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9)))
def test_present_values_is_np_unique(arr):
    got, want = present_values(arr), np.unique(arr)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_present_values_wide_range_float_and_empty():
    wide = np.array([-(2**40), 3, 2**40, 3], dtype=np.int64)  # beyond the counting range
    np.testing.assert_array_equal(present_values(wide), np.unique(wide))
    floats = np.array([0.5, 0.5, -1.0])
    np.testing.assert_array_equal(present_values(floats), np.unique(floats))
    assert present_values(np.zeros((0, 4), np.int64)).size == 0


def test_validate_names_every_unknown_value():
    mask = np.zeros((8, 16, 16), np.int64)
    mask[0, 0, :3] = [9, 7, 9]
    with pytest.raises(InputError, match=r"frame: values \[7, 9\] are not in schema 'tee'"):
        get_schema("tee").validate(mask, source="frame")
