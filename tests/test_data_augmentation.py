"""Tests of the in-graph augmentation: crop camera geometry, warping, appearance ops."""

import math

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf.data import augmentation

S = 64


def rotation_matrix(axis, angle):
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def numpy_look_at_box(k, r, up, box, side):
    """Independent float64 reimplementation of cameralib's turn_towards + look_at_box."""
    centre = np.array([box[0] + box[2] / 2, box[1] + box[3] / 2, 1.0])
    z = r.T @ np.linalg.solve(k, centre)
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    new_r = np.stack([x, np.cross(z, x), z])
    new_k = k.astype(np.float64).copy()
    new_k[0, 0] = new_k[1, 1] = (k[0, 0] + k[1, 1]) / 2
    x0, y0, w, h = box
    ends = ([[x0, y0 + h / 2], [x0 + w, y0 + h / 2]] if w > h else
            [[x0 + w / 2, y0], [x0 + w / 2, y0 + h]])
    hom = new_k @ new_r @ r.T @ np.linalg.inv(k)
    mapped = [(hom @ [*e, 1])[:2] / (hom @ [*e, 1])[2] for e in ends]
    new_k[:2, :2] *= side / np.linalg.norm(mapped[1] - mapped[0])
    new_k[:2, 2] = (side - 1) / 2
    return new_k, new_r


def _map(h, point):
    p = np.asarray(h, np.float64) @ [point[0], point[1], 1.0]
    return p[:2] / p[2]


K3 = np.array([[500, 0, 320], [0, 510, 240], [0, 0, 1]], np.float32)
R3 = rotation_matrix([0.2, 1.0, -0.3], 0.7).astype(np.float32)
UP = np.array([0, -1, 0], np.float32)


@pytest.mark.parametrize('box', [(400, 60, 80, 200), (100, 300, 150, 60)])
def test_crop_camera_3d_no_augmentation(box):
    k_c, r_c = augmentation.crop_camera(K3, R3, UP, box, True, S,
                                        augmentation.identity_geometry())
    k_ref, r_ref = numpy_look_at_box(K3, R3, UP, np.array(box, np.float64), S)
    np.testing.assert_allclose(k_c.numpy(), k_ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(r_c.numpy(), r_ref, atol=1e-5)
    # Upright (camera x axis horizontal: orthogonal to world up) and a proper rotation.
    assert abs(r_c.numpy()[0] @ UP) < 1e-6
    np.testing.assert_allclose(np.linalg.det(r_c.numpy()), 1.0, atol=1e-5)
    h = augmentation.homography(K3, R3, k_c, r_c).numpy()
    centre = (box[0] + box[2] / 2, box[1] + box[3] / 2)
    np.testing.assert_allclose(_map(h, centre), [(S - 1) / 2] * 2, atol=1e-3)
    x, y, w, h_ = box
    ends = ([(x, y + h_ / 2), (x + w, y + h_ / 2)] if w > h_ else
            [(x + w / 2, y), (x + w / 2, y + h_)])
    np.testing.assert_allclose(np.linalg.norm(_map(h, ends[1]) - _map(h, ends[0])), S,
                               rtol=1e-4)


def fov_camera(height, width, fov_deg=8.0):
    f = max(height, width) / (2 * math.tan(math.radians(fov_deg) / 2))
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]], np.float32)


def test_crop_camera_2d_no_augmentation_and_flip():
    k_s = fov_camera(120, 200)
    box = (30, 20, 50, 90)
    k_c, r_c = augmentation.crop_camera(k_s, np.eye(3), UP, box, False, S,
                                        augmentation.identity_geometry())
    h = augmentation.homography(k_s, np.eye(3, dtype=np.float32), k_c, r_c).numpy()
    np.testing.assert_allclose(_map(h, (55, 65)), [(S - 1) / 2] * 2, atol=1e-3)
    # Pure scaling by S / long side (2D path: no turning).
    np.testing.assert_allclose(_map(h, (55, 110)) - _map(h, (55, 20)), [0, S], atol=1e-3)
    np.testing.assert_allclose(_map(h, (80, 65)) - _map(h, (30, 65)), [S * 50 / 90, 0],
                               atol=1e-3)
    # Flip: mirrored about the crop centre; centre shift moves the box centre off-centre.
    geometry = augmentation.identity_geometry()
    geometry['flip'] = tf.constant(True)
    k_f, r_f = augmentation.crop_camera(k_s, np.eye(3), UP, box, False, S, geometry)
    h_f = augmentation.homography(k_s, np.eye(3, dtype=np.float32), k_f, r_f).numpy()
    for point in [(40, 30), (70, 100)]:
        plain, flipped = _map(h, point), _map(h_f, point)
        np.testing.assert_allclose(flipped, [S - 1 - plain[0], plain[1]], atol=1e-3)
    geometry = augmentation.identity_geometry()
    geometry['shift'] = tf.constant([0.1, 0.0])
    k_s2, r_s2 = augmentation.crop_camera(k_s, np.eye(3), UP, box, False, S, geometry)
    h_s = augmentation.homography(k_s, np.eye(3, dtype=np.float32), k_s2, r_s2).numpy()
    np.testing.assert_allclose(_map(h_s, (55 + 9, 65)), [(S - 1) / 2] * 2, atol=1e-3)


def test_crop_camera_zoom_roll_3d():
    geometry = augmentation.identity_geometry()
    geometry['zoom'] = tf.constant(1.2)
    geometry['roll'] = tf.constant(0.5)
    box = (300, 200, 60, 120)
    k0, r0 = augmentation.crop_camera(K3, R3, UP, box, True, S, augmentation.identity_geometry())
    k1, r1 = augmentation.crop_camera(K3, R3, UP, box, True, S, geometry)
    h0 = augmentation.homography(K3, R3, k0, r0).numpy()
    h1 = augmentation.homography(K3, R3, k1, r1).numpy()
    c = (S - 1) / 2
    np.testing.assert_allclose(_map(h1, (330, 260)), [c, c], atol=1e-3)
    # Around the centre, points move by a rotation of 0.5 rad and a 1.2x zoom (small offsets).
    d0 = _map(h0, (331, 260)) - c
    d1 = _map(h1, (331, 260)) - c
    np.testing.assert_allclose(np.linalg.norm(d1) / np.linalg.norm(d0), 1.2, rtol=1e-3)
    angle = math.atan2(d1[1], d1[0]) - math.atan2(d0[1], d0[0])
    np.testing.assert_allclose(abs((angle + math.pi) % (2 * math.pi) - math.pi), 0.5, atol=1e-3)


def test_partial_box_and_sample_geometry_ranges():
    sub = augmentation.partial_box(tf.constant([10.0, 20.0, 40.0, 100.0]),
                                   tf.constant([0.5, 1.0, 0.0])).numpy()
    # Square of side 100 about the centre (30, 70) -> corner (-20, 20); sub side 50 at x-end.
    np.testing.assert_allclose(sub, [30.0, 20.0, 50.0, 50.0])
    settings = augmentation.settings_from_config({})
    draws = [augmentation.sample_geometry(tf.constant([1, i], tf.int64), settings, True)
             for i in range(200)]
    zoom = np.array([float(d['zoom']) for d in draws])
    roll = np.array([float(d['roll']) for d in draws])
    shift = np.array([d['shift'].numpy() for d in draws])
    flips = np.array([bool(d['flip']) for d in draws])
    partial = np.array([bool(d['partial']) for d in draws])
    assert zoom.min() >= 0.75 and zoom.max() <= 1.25 and np.ptp(zoom) > 0.4
    assert np.abs(roll).max() <= math.pi
    assert np.mean(np.abs(roll) > math.radians(20)) > 0.02  # some full rotations (p = 0.1)
    assert np.linalg.norm(shift, axis=1).max() <= 0.1 + 1e-6
    assert 0.35 < flips.mean() < 0.65 and 0.05 < partial.mean() < 0.3
    off = augmentation.settings_from_config(dict(geom_aug=False, hflip_aug=False))
    d = augmentation.sample_geometry(tf.constant([1, 2], tf.int64), off, True)
    assert float(d['zoom']) == 1.0 and float(d['roll']) == 0.0 and not bool(d['flip'])
    with pytest.raises(ValueError, match='jpeg_aug_prob'):
        augmentation.settings_from_config(dict(jpeg_aug_prob=2.0))


def test_warp_image_translation_and_border():
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(20, 30, 3)).astype(np.float32)
    shift = np.array([[1, 0, -3.0], [0, 1, -2.0], [0, 0, 1]], np.float32)
    out = augmentation.warp_image(image, shift, 16, border_value=255).numpy()
    np.testing.assert_allclose(out, image[2:18, 3:19], atol=1e-6)
    # Half-pixel shift: bilinear average; outside the source: border value (255 -> 1.0).
    half = np.array([[1, 0, 0.5], [0, 1, 0.0], [0, 0, 1]], np.float32)
    out = augmentation.warp_image(image, half, 16).numpy()
    np.testing.assert_allclose(out[3, 5], 0.5 * (image[3, 4] + image[3, 5]), atol=1e-5)
    far = np.array([[1, 0, 100.0], [0, 1, 0.0], [0, 0, 1]], np.float32)
    np.testing.assert_allclose(augmentation.warp_image(image, far, 16, 255).numpy(), 1.0)


def _test_image():
    return tf.random.stateless_uniform([32, 32, 3], seed=[3, 4])


def test_color_augment_range_shape_and_change():
    image = _test_image()
    outs = [augmentation.color_augment(image, tf.constant([5, i], tf.int64)) for i in range(4)]
    for out in outs:
        assert out.shape == (32, 32, 3) and out.dtype == tf.float32
        assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 1
        assert float(tf.reduce_mean(tf.abs(out - image))) > 1e-3
    assert not np.allclose(outs[0].numpy(), outs[1].numpy())
    # Deterministic per key.
    np.testing.assert_array_equal(
        outs[2].numpy(), augmentation.color_augment(image, tf.constant([5, 2], tf.int64)).numpy())


def test_jpeg_augment_probability_and_range():
    image = _test_image()
    never = augmentation.jpeg_augment(image, tf.constant([1, 1], tf.int64), 0.0)
    np.testing.assert_array_equal(never.numpy(), image.numpy())
    always = augmentation.jpeg_augment(image, tf.constant([1, 1], tf.int64), 1.0)
    assert always.shape == image.shape
    assert 0 <= float(tf.reduce_min(always)) and float(tf.reduce_max(always)) <= 1
    assert float(tf.reduce_mean(tf.abs(always - image))) > 0.01  # noise compresses badly


def test_random_erase_rectangle_inside_with_noise():
    image = tf.zeros([40, 30, 3]) + 0.5
    areas = []
    for i in range(30):
        out = augmentation.random_erase(image, tf.constant([9, i], tf.int64)).numpy()
        changed = np.any(out != 0.5, axis=-1)
        assert 0 <= out.min() and out.max() <= 1 and out.shape == (40, 30, 3)
        if changed.sum() > 4:
            rows, cols = np.nonzero(changed)
            # A rectangle: its bounding box is (nearly) fully changed (noise rarely hits 0.5).
            box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert box.mean() > 0.97
            areas.append(box.size / (40 * 30))
    assert max(areas) <= 1 / 3 + 0.05 and len(areas) > 15


def test_appearance_augment_keeps_range_and_shape():
    image = _test_image()
    settings = augmentation.settings_from_config(dict(jpeg_aug_prob=1.0, occlude_aug_prob=1.0))
    for i in range(3):
        out = augmentation.appearance_augment(image, tf.constant([2, i], tf.int64), settings)
        assert out.shape == (32, 32, 3)
        assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 1
