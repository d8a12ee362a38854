import numpy as np
import pytest

from nlf_tf.data import rle


def _mask_from_runs(runs, shape):
    """Straightforward reference: fill column-major pixels run by run, alternating 0/1."""
    h, w = shape
    flat = []
    value = 0
    for run in runs:
        flat.extend([value] * run)
        value = 1 - value
    return np.array(flat, np.uint8).reshape(w, h).T


def test_compressed_string_hand_made():
    # Worked out by hand from COCO's rleToString: 0 -> '0', 3 -> '3'; 40 = 8 + 1*32 -> groups
    # (8 | 0x20) = 40 -> 'X' then 1 -> '1'; index 3 is delta-coded: 1 - 3 = -2 -> group 30 with
    # the sign bit set and the rest -1 -> 'N'.
    assert rle.counts_to_string([0, 3, 40, 1]) == '03X1N'
    np.testing.assert_array_equal(rle.string_to_counts('03X1N'), [0, 3, 40, 1])
    mask = rle.decode({'size': [4, 11], 'counts': '03X1N'})
    np.testing.assert_array_equal(mask, _mask_from_runs([0, 3, 40, 1], (4, 11)))
    assert mask.sum() == 4
    assert mask[0, 0] == 1 and mask[3, 10] == 1 and mask[3, 0] == 0
    # bytes counts (as pycocotools returns them) decode the same
    np.testing.assert_array_equal(rle.decode({'size': [4, 11], 'counts': b'03X1N'}), mask)


def test_compressed_string_large_and_negative_deltas():
    # 100 = 4 + 3*32 -> (4 | 0x20) 'T' then 3 -> '3'. Index 3: 5 - 100 = -95 = 1 + (-3)*32 ->
    # group 1 with "more" -> chr(48 + 33) = 'Q', then -3 & 31 = 29 (sign bit set, rest -1) -> 'M'.
    counts = [7, 100, 2, 5]
    string = rle.counts_to_string(counts)
    assert string == '7T32QM'
    np.testing.assert_array_equal(rle.string_to_counts(string), counts)


def test_uncompressed_list_counts():
    runs = [2, 3, 1, 6]
    mask = rle.decode({'size': [3, 4], 'counts': runs})
    np.testing.assert_array_equal(mask, _mask_from_runs(runs, (3, 4)))
    # column-major: first column is [0, 0, 1], second [1, 1, 0]
    np.testing.assert_array_equal(mask[:, 0], [0, 0, 1])
    np.testing.assert_array_equal(mask[:, 1], [1, 1, 0])


def test_round_trip_random_masks():
    rng = np.random.default_rng(3)
    for _ in range(30):
        h, w = rng.integers(1, 40, size=2)
        mask = rng.random((h, w)) < rng.random()
        encoded = rle.encode(mask)
        assert encoded['size'] == [h, w]
        np.testing.assert_array_equal(rle.decode(encoded), mask.astype(np.uint8))
        counts = rle.mask_to_counts(mask)
        np.testing.assert_array_equal(_mask_from_runs(counts, (h, w)), mask.astype(np.uint8))
        assert rle.area(encoded) == mask.sum()


def test_mask_starting_with_foreground_has_leading_zero_run():
    mask = np.ones((2, 2), bool)
    assert rle.mask_to_counts(mask) == [0, 4]
    assert rle.encode(mask)['counts'] == '04'


def test_errors_name_the_field():
    with pytest.raises(ValueError, match='counts'):
        rle.decode({'size': [2, 2], 'counts': [1, 2]})
    with pytest.raises(ValueError, match='size'):
        rle.decode({'size': [2], 'counts': [4]})
    with pytest.raises(ValueError, match='counts'):
        rle.decode({'size': [2, 2], 'counts': 5})
