"""Tests of the in-graph COCO RLE decoder, the INRIA Holidays background bank and the in-graph
background replacement, on tiny INRIA-layout folders written here."""

import math

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf.data import backgrounds
from nlf_tf.data import rle


# ----------------------------------------------------------------------------------------
# RLE
# ----------------------------------------------------------------------------------------

def random_masks():
    rng = np.random.default_rng(0)
    masks = [np.zeros((1, 1), np.uint8), np.ones((1, 1), np.uint8), np.ones((7, 9), np.uint8),
             np.zeros((40, 33), np.uint8)]
    for _ in range(12):
        h, w = rng.integers(1, 60, 2)
        # Blobs of varied density give short and long runs (multi-group and negative deltas).
        mask = rng.random((h, w)) < rng.uniform(0.05, 0.95)
        if rng.random() < 0.5:
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            mask[y0:y0 + 20, x0:x0 + 25] = True
        masks.append(mask.astype(np.uint8))
    big = np.zeros((120, 90), np.uint8)
    big[10:100, 20:70] = 1  # runs > 2^10 need 3 groups
    masks.append(big)
    return masks


def test_decode_rle_equals_numpy_decoder():
    decode = tf.function(backgrounds.decode_rle)  # also in graph mode
    for mask in random_masks():
        encoded = rle.encode(mask)
        counts = tf.constant(encoded['counts'])
        got = decode(counts, mask.shape[0], mask.shape[1]).numpy()
        assert got.dtype == np.uint8 and got.shape == mask.shape
        np.testing.assert_array_equal(got, rle.decode(encoded))
        np.testing.assert_array_equal(got, mask)
        runs, ok = backgrounds.rle_string_to_counts(counts)
        assert bool(ok)
        np.testing.assert_array_equal(runs.numpy(), rle.string_to_counts(encoded['counts']))
        assert bool(backgrounds.rle_is_valid(counts, *mask.shape))


def test_decode_rle_handwritten_string():
    # Runs 3 zeros, 2 ones, 35 zeros (35 = 3 + 32: two groups, delta-free since index 2),
    # then 5 ones written as delta 5 - 2 = 3: '3', '2', chr(48 + 3 + 32) + chr(48 + 1), '3'.
    string = '32' + chr(48 + 3 + 32) + chr(49) + '3'
    np.testing.assert_array_equal(backgrounds.rle_string_to_counts(tf.constant(string))[0],
                                  [3, 2, 35, 5])
    mask = backgrounds.decode_rle(tf.constant(string), 5, 9).numpy()
    flat = np.concatenate([np.zeros(3), np.ones(2), np.zeros(35), np.ones(5)])
    np.testing.assert_array_equal(mask, flat.reshape(9, 5).T)


@pytest.mark.parametrize('string,height,width', [
    ('32', 3, 3),          # covers 5 pixels, not 9
    ('3' + chr(48 + 40), 3, 3),  # ends inside a number
    ('3~', 3, 3),          # '~' is not an RLE character
    ('', 2, 2),
])
def test_invalid_rle(string, height, width):
    assert not bool(backgrounds.rle_is_valid(tf.constant(string), height, width))
    with pytest.raises(tf.errors.InvalidArgumentError, match='mask_rle_counts'):
        backgrounds.decode_rle(tf.constant(string), height, width)


# ----------------------------------------------------------------------------------------
# Bank
# ----------------------------------------------------------------------------------------

def write_jpeg(path, image):
    path.write_bytes(tf.io.encode_jpeg(image, quality=100, chroma_downsampling=False).numpy())


def smooth_image(rng, h, w):
    """A smooth colour image (JPEG-friendly) of random gradients."""
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    channels = [128 + 100 * np.sin(rng.uniform(2, 6) * xx + rng.uniform(2, 6) * yy + p)
                for p in rng.uniform(0, 6, 3)]
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def holidays(tmp_path_factory):
    root = tmp_path_factory.mktemp('inria_holidays')
    (root / 'jpg_small').mkdir()
    rng = np.random.default_rng(1)
    write_jpeg(root / 'jpg_small' / '100000.jpg', smooth_image(rng, 20, 30))
    write_jpeg(root / 'jpg_small' / '100001.jpg', smooth_image(rng, 60, 40))  # > cap for S=16
    write_jpeg(root / 'jpg_small' / '100002.jpg', smooth_image(rng, 18, 18))
    (root / 'non_person_images.txt').write_text('100000.jpg\n100001.jpg\n')
    return root


def test_bank_from_list_downscales_large_images(holidays):
    bank = backgrounds.build_background_bank(str(holidays), 16, 100, 0)
    assert bank.count == 2
    cap = backgrounds.stored_short_side(16)
    assert cap == 24
    np.testing.assert_array_equal(bank.sizes, [[20, 30], [36, 24]])
    # The small image is kept byte for byte, the large one re-encoded at its new size.
    assert bank.jpegs[0] == (holidays / 'jpg_small' / '100000.jpg').read_bytes()
    assert tuple(tf.io.decode_jpeg(bank.jpegs[1]).shape) == (36, 24, 3)
    assert bank.nbytes == sum(len(j) for j in bank.jpegs) + bank.sizes.nbytes
    assert bank.tensors['jpegs'].dtype == tf.string


def test_bank_without_list_and_errors(holidays, tmp_path):
    (tmp_path / 'jpg_small').mkdir()
    for name in ('a.jpg', 'b.JPEG'):
        (tmp_path / 'jpg_small' / name).write_bytes((holidays / 'jpg_small' / '100002.jpg')
                                                    .read_bytes())
    (tmp_path / 'jpg_small' / 'notes.txt').write_text('x')
    assert backgrounds.build_background_bank(str(tmp_path), 16, 100, 0).count == 2
    assert backgrounds.build_background_bank(str(tmp_path), 16, 1, 0).count == 1
    (tmp_path / 'non_person_images.txt').write_text('a.jpg\nmissing.jpg\n')
    with pytest.raises(ValueError, match='line 2'):
        backgrounds.background_paths(str(tmp_path))
    with pytest.raises(ValueError, match='not a folder'):
        backgrounds.background_paths(str(tmp_path / 'nope'))
    (tmp_path / 'non_person_images.txt').write_text('\n')
    with pytest.raises(ValueError, match='no background images'):
        backgrounds.background_paths(str(tmp_path))


# ----------------------------------------------------------------------------------------
# Replacement
# ----------------------------------------------------------------------------------------

def bilinear_clamped(image, xs, ys):
    """NumPy bilinear sampling with coordinates clamped to the image (nearest border)."""
    h, w = image.shape[:2]
    xs, ys = np.clip(xs, 0, w - 1), np.clip(ys, 0, h - 1)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (xs - x0)[..., None], (ys - y0)[..., None]
    return ((1 - fy) * ((1 - fx) * image[y0, x0] + fx * image[y0, x1])
            + fy * ((1 - fx) * image[y1, x0] + fx * image[y1, x1]))


def bilinear_zero(image, xs, ys):
    """NumPy bilinear sampling with zeros outside the image."""
    h, w = image.shape[:2]
    padded = np.pad(image, [(1, 1), (1, 1)] + [(0, 0)] * (image.ndim - 2))
    xs, ys = np.clip(xs + 1, 0, w + 1), np.clip(ys + 1, 0, h + 1)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    x1, y1 = np.minimum(x0 + 1, w + 1), np.minimum(y0 + 1, h + 1)
    fx, fy = xs - x0, ys - y0
    return ((1 - fy) * ((1 - fx) * padded[y0, x0] + fx * padded[y0, x1])
            + fy * ((1 - fx) * padded[y1, x0] + fx * padded[y1, x1]))


SIDE = 16


def person_mask(h, w):
    mask = np.zeros((h, w), np.uint8)
    mask[3:12, 5:10] = 1
    mask[6, 2:14] = 1
    return mask


def test_render_background_matches_numpy(holidays):
    bank = backgrounds.build_background_bank(str(holidays), SIDE, 100, 0)
    for index, zoom, shift in ((0, 1.2, (0.0, 0.0)), (1, 1.45, (0.6, -0.7))):
        got = backgrounds.render_background(bank.tensors, index, tf.constant(zoom),
                                            tf.constant(shift, tf.float32), SIDE).numpy()
        image = tf.io.decode_jpeg(bank.jpegs[index]).numpy().astype(np.float64) / 255
        h, w = image.shape[:2]
        f = zoom * SIDE / min(h, w)
        yy, xx = np.mgrid[:SIDE, :SIDE].astype(np.float64)
        cx = (SIDE - 1) / 2 + shift[0] * 0.1 * SIDE
        cy = (SIDE - 1) / 2 + shift[1] * 0.1 * SIDE
        want = bilinear_clamped(image, (xx - cx) / f + (w - 1) / 2, (yy - cy) / f + (h - 1) / 2)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_replacement_keeps_person_and_replaces_rest(holidays):
    bank = backgrounds.build_background_bank(str(holidays), SIDE, 100, 0)
    rng = np.random.default_rng(4)
    image = rng.random((SIDE, SIDE, 3)).astype(np.float32)
    mask = person_mask(SIDE, SIDE)
    counts = tf.constant(rle.encode(mask)['counts'])
    size = tf.constant([SIDE, SIDE])
    replaced = 0
    for seed in range(6):
        key = tf.constant([seed, 5], tf.int64)
        out = backgrounds.replace_background(image, counts, size, size, tf.eye(3), bank.tensors,
                                             key, 1.0).numpy()
        assert out.shape == image.shape and out.dtype == np.float32
        assert np.all((out >= 0) & (out <= 1))
        draws = backgrounds.sample_draws(key, bank.count)
        background = backgrounds.render_background(
            bank.tensors, draws['index'], draws['zoom'], draws['shift'], SIDE).numpy()
        person = mask.astype(bool)
        np.testing.assert_array_equal(out[person], image[person])
        np.testing.assert_allclose(out[~person], background[~person], atol=1e-6)
        replaced += int(np.any(out[~person] != image[~person]))
        np.testing.assert_array_equal(out, backgrounds.replace_background(
            image, counts, size, size, tf.eye(3), bank.tensors, key, 1.0).numpy())
    assert replaced == 6
    # Probability 0, no mask, a malformed mask or a mask of another size: unchanged.
    key = tf.constant([0, 5], tf.int64)
    for c, s, p in ((counts, size, 0.0), (tf.constant(''), size, 1.0),
                    (tf.constant('3~'), size, 1.0),
                    (counts, tf.constant([SIDE, SIDE + 1]), 1.0)):
        out = backgrounds.replace_background(image, c, s, size, tf.eye(3), bank.tensors, key, p)
        np.testing.assert_array_equal(out.numpy(), image)


def test_replacement_warps_mask_with_homography(holidays):
    """A stored image of another size: the mask follows the image's homography (soft edges)."""
    bank = backgrounds.build_background_bank(str(holidays), SIDE, 100, 0)
    h_stored, w_stored = 12, 10
    mask = person_mask(h_stored, w_stored + 2)[:, 2:]
    assert mask.shape == (h_stored, w_stored)
    counts = tf.constant(rle.encode(mask)['counts'])
    angle = 0.3
    homography = np.array([[1.3 * math.cos(angle), -1.3 * math.sin(angle), 4.0],
                           [1.3 * math.sin(angle), 1.3 * math.cos(angle), 1.5],
                           [0.0, 0.0, 1.0]], np.float32)
    image = np.random.default_rng(5).random((SIDE, SIDE, 3)).astype(np.float32)
    key = tf.constant([3, 3], tf.int64)
    size = tf.constant([h_stored, w_stored])
    out = backgrounds.replace_background(image, counts, size, size, homography, bank.tensors,
                                         key, 1.0).numpy()
    draws = backgrounds.sample_draws(key, bank.count)
    background = backgrounds.render_background(
        bank.tensors, draws['index'], draws['zoom'], draws['shift'], SIDE).numpy()
    inv = np.linalg.inv(homography.astype(np.float64))
    yy, xx = np.mgrid[:SIDE, :SIDE].astype(np.float64)
    src = np.stack([xx, yy, np.ones_like(xx)], -1) @ inv.T
    alpha = bilinear_zero(mask.astype(np.float64), src[..., 0] / src[..., 2],
                          src[..., 1] / src[..., 2])[..., None]
    assert np.any((alpha > 0.05) & (alpha < 0.95))  # soft edges
    np.testing.assert_allclose(out, alpha * image + (1 - alpha) * background, atol=1e-5)


def test_background_probability_and_draw_ranges():
    assert float(backgrounds.background_probability(True, 0.7)) == pytest.approx(0.2)
    assert float(backgrounds.background_probability(False, 0.7)) == pytest.approx(0.7)
    for seed in range(20):
        draws = backgrounds.sample_draws(tf.constant([seed, 0], tf.int64), 3)
        assert 0 <= int(draws['index']) < 3
        assert 1.2 <= float(draws['zoom']) < 1.5
        assert np.linalg.norm(draws['shift'].numpy()) <= 1.0
