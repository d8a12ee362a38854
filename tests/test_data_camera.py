"""Tests of the NumPy dataset camera (nlf_tf/data/camera.py) against hand-computed values and
independent formulas (Bouguet toolbox projection, scipy rotations)."""


import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from nlf_tf.data.camera import Camera, distort_points, look_at_box, rodrigues, undistort_points

K_SIMPLE = np.array([[500.0, 0.0, 320.0], [0.0, 400.0, 240.0], [0.0, 0.0, 1.0]])
DIST5 = np.array([-0.28, 0.09, 0.0012, -0.0008, -0.015])
# Azure-Kinect-like rational model (the kind of coefficients BEHAVE ships).
DIST8 = np.array([0.52, -2.6, 0.0006, -0.0003, 1.5, 0.39, -2.4, 1.4])


def _general_camera(distortion=None, world_up=(0, -1, 0)):
    rot = Rotation.from_rotvec([0.1, -0.3, 0.05]).as_matrix()
    return Camera(K_SIMPLE, rot, optical_center=(0.3, -1.2, 2.0), distortion=distortion,
                  world_up=world_up)


def _points_in_front(camera, n, rng, depth=(2.0, 6.0)):
    """World points inside the view of `camera` (pixel grid 640x480)."""
    pixels = rng.uniform([40, 40], [600, 440], size=(n, 2))
    depths = rng.uniform(*depth, size=n)
    return camera.image_to_world(pixels, depths).astype(np.float64)


# ----------------------------------------------------------------------------------------
# Projection basics
# ----------------------------------------------------------------------------------------

def test_project_known_point():
    cam = Camera(K_SIMPLE, optical_center=(1.0, 2.0, 3.0))
    # camera coords (0.5, -1, 2) -> normalized (0.25, -0.5) -> (320 + 125, 240 - 200)
    np.testing.assert_allclose(cam.world_to_camera([1.5, 1.0, 5.0]), [0.5, -1.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(cam.world_to_image([1.5, 1.0, 5.0]), [445.0, 40.0], atol=1e-4)

    # 90 degrees about z: R = [[0,-1,0],[1,0,0],[0,0,1]] maps (0.5,-1,2) to (1, 0.5, 2).
    cam = Camera(K_SIMPLE, rodrigues([0, 0, np.pi / 2]), optical_center=(1.0, 2.0, 3.0))
    out = cam.world_to_image(np.array([[[1.5, 1.0, 5.0]]]))
    assert out.shape == (1, 1, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [570.0, 340.0], atol=1e-4)
    # Back-projection at the right depth returns the world point.
    np.testing.assert_allclose(cam.image_to_world([570.0, 340.0], depth=2.0), [1.5, 1.0, 5.0],
                               atol=1e-5)
    np.testing.assert_allclose(cam.camera_to_world([1.0, 0.5, 2.0]), [1.5, 1.0, 5.0], atol=1e-6)
    ext = cam.extrinsic_matrix
    np.testing.assert_allclose(ext[:3, :3] @ [1.5, 1.0, 5.0] + ext[:3, 3], [1.0, 0.5, 2.0],
                               atol=1e-12)


def test_rodrigues_matches_scipy_and_hand_case():
    np.testing.assert_allclose(rodrigues([0, 0, np.pi / 2]),
                               [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    rng = np.random.default_rng(0)
    for rotvec in rng.normal(size=(5, 3)):
        np.testing.assert_allclose(rodrigues(rotvec),
                                   Rotation.from_rotvec(rotvec).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(rodrigues([1e-14, 0, 0]), np.eye(3), atol=1e-13)


def test_bouguet_round_trip_matches_toolbox_formula():
    fc = np.array([1497.7, 1494.5])
    cc = np.array([521.3, 383.9])
    alpha_c = 0.001
    KK = np.array([[fc[0], alpha_c * fc[0], cc[0]], [0, fc[1], cc[1]], [0, 0, 1]])
    kc = np.array([-0.21, 0.18, 0.0011, -0.0007, 0.02])
    om_ext = np.array([2.1, 0.15, -0.2])
    T_ext = np.array([-250.0, 900.0, 4200.0])  # mm
    cam = Camera.from_bouguet(KK, kc, om_ext, T_ext)

    rot = Rotation.from_rotvec(om_ext).as_matrix()
    np.testing.assert_allclose(cam.optical_center, -rot.T @ T_ext / 1000, atol=1e-12)
    np.testing.assert_allclose(cam.world_up, [0, 1, 0])

    # World points (mm) that land in front of the camera.
    rng = np.random.default_rng(1)
    cam_pts = np.stack([rng.uniform(-600, 600, 20), rng.uniform(-500, 500, 20),
                        rng.uniform(3000, 5000, 20)], axis=1)
    world_mm = (cam_pts - T_ext) @ rot  # inverse of p_cam = R p_world + T

    # Bouguet's project_points2, written out.
    y = world_mm @ rot.T + T_ext
    x = y[:, :2] / y[:, 2:]
    r2 = np.sum(x ** 2, axis=1)
    radial = 1 + kc[0] * r2 + kc[1] * r2 ** 2 + kc[4] * r2 ** 3
    dx = np.stack([2 * kc[2] * x[:, 0] * x[:, 1] + kc[3] * (r2 + 2 * x[:, 0] ** 2),
                   kc[2] * (r2 + 2 * x[:, 1] ** 2) + 2 * kc[3] * x[:, 0] * x[:, 1]], axis=1)
    xd = x * radial[:, None] + dx
    expected = np.stack([fc[0] * (xd[:, 0] + alpha_c * xd[:, 1]) + cc[0],
                         fc[1] * xd[:, 1] + cc[1]], axis=1)

    np.testing.assert_allclose(cam.world_to_image(world_mm / 1000), expected, atol=2e-3)
    # And back: pixels + camera depth -> world metres.
    back = cam.image_to_world(expected, depth=cam_pts[:, 2] / 1000)
    np.testing.assert_allclose(back, world_mm / 1000, atol=1e-5)

    cam_m = Camera.from_bouguet(KK, kc, om_ext, T_ext / 1000, units='m')
    np.testing.assert_allclose(cam_m.optical_center, cam.optical_center, atol=1e-12)


# ----------------------------------------------------------------------------------------
# Distortion
# ----------------------------------------------------------------------------------------

def test_distortion_formula_8_coefficients():
    cam = Camera(K_SIMPLE, distortion=DIST8)
    point = np.array([0.3, -0.2, 1.0])
    k1, k2, p1, p2, k3, k4, k5, k6 = DIST8
    x, y = 0.3, -0.2
    r2 = x * x + y * y
    radial = (1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3) / (1 + k4 * r2 + k5 * r2 ** 2 +
                                                            k6 * r2 ** 3)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    np.testing.assert_allclose(cam.camera_to_image(point), [500 * xd + 320, 400 * yd + 240],
                               atol=1e-4)
    # The rational part really matters here (vs. dropping k4..k6).
    assert abs(cam.camera_to_image(point)[0] -
               Camera(K_SIMPLE, distortion=DIST8[:5]).camera_to_image(point)[0]) > 1.0


@pytest.mark.parametrize('coeffs', [DIST5, DIST8], ids=['5coef', '8coef'])
def test_distortion_undistortion_round_trip(coeffs):
    ys, xs = np.mgrid[0:480:15, 0:640:20]
    pixels = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float64)
    cam = Camera(K_SIMPLE, distortion=coeffs)

    # float64 core: undistort(distort(x)) and distort(undistort(x)) to << 1e-6 px.
    normalized = (pixels - K_SIMPLE[:2, 2]) / [500.0, 400.0]
    und = undistort_points(normalized, coeffs)
    np.testing.assert_allclose(distort_points(und, coeffs) * 500, normalized * 500, atol=1e-6)
    np.testing.assert_allclose(undistort_points(distort_points(normalized, coeffs), coeffs) * 500,
                               normalized * 500, atol=1e-6)

    # Public float32 API: pixels -> rays -> pixels.
    rays = cam.image_to_camera(pixels, depth=3.0)
    np.testing.assert_allclose(rays[:, 2], 3.0)
    np.testing.assert_allclose(cam.camera_to_image(rays), pixels, atol=1e-3)
    # Undistortion actually moved the rays (distortion is not ignored).
    plain = Camera(K_SIMPLE).image_to_camera(pixels, depth=3.0)
    assert np.max(np.abs(rays - plain)) > 0.05


def test_undistortion_beyond_the_lens_fold_is_nan():
    # Strong barrel: r_d(r) = r (1 - 0.45 r^2 + 0.25 r^4 - 0.1 r^6) peaks at r_d ~ 0.71, so a
    # distorted radius of 1.5 has no preimage, while r = 1.05 (just inside the fold) inverts.
    coeffs = np.array([-0.45, 0.25, 0.0, 0.0, -0.1])
    result = undistort_points(np.array([[1.2, 0.9], [0.0, 0.0]]), coeffs)
    assert np.all(np.isnan(result[0])) and np.all(result[1] == 0)
    inside = np.array([[1.05 * np.cos(0.3), 1.05 * np.sin(0.3)]])
    np.testing.assert_allclose(undistort_points(distort_points(inside, coeffs), coeffs), inside,
                               atol=1e-10)


def test_undistort_returns_camera_without_distortion():
    cam = _general_camera(DIST5)
    und = cam.undistort()
    assert und.distortion is None and cam.distortion is not None
    np.testing.assert_array_equal(und.intrinsic_matrix, cam.intrinsic_matrix)
    np.testing.assert_array_equal(und.rot_world_to_cam, cam.rot_world_to_cam)
    np.testing.assert_array_equal(und.optical_center, cam.optical_center)
    assert Camera(K_SIMPLE, distortion=np.zeros(5)).distortion is None


# ----------------------------------------------------------------------------------------
# Camera transformations
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('world_up', [(0, -1, 0), (0, 0, 1)])
def test_turn_towards_centres_target_and_keeps_horizon_level(world_up):
    cam = _general_camera(DIST5, world_up=world_up)
    target = np.array([100.0, 50.0])
    turned = cam.turn_towards(target_image_point=target)

    rot = turned.rot_world_to_cam
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    world_target = cam.image_to_world(target, depth=4.0)
    np.testing.assert_allclose(turned.world_to_image(world_target), turned.intrinsic_matrix[:2, 2],
                               atol=1e-3)
    np.testing.assert_allclose(cam.reproject_points(target, turned),
                               turned.intrinsic_matrix[:2, 2], atol=1e-3)

    # No roll: camera x is horizontal, and a world "up" step from the target projects straight up.
    up = np.asarray(world_up, np.float64)
    assert abs(rot[0] @ up) < 1e-12
    # (distortion-free, as tangential distortion would bend the projected vertical line)
    above = turned.undistort().world_to_image(world_target + 0.5 * up)
    assert above[0] == pytest.approx(turned.intrinsic_matrix[0, 2], abs=1e-3)
    assert above[1] < turned.intrinsic_matrix[1, 2] - 10

    # Turning towards the same world point resets a flip and roll applied before.
    again = cam.horizontal_flip().rotate(roll=0.4).turn_towards(target_world_point=world_target)
    np.testing.assert_allclose(again.rot_world_to_cam, rot, atol=1e-6)


def test_turn_towards_degenerate_vertical_direction():
    cam = Camera(K_SIMPLE, world_up=(0, -1, 0))
    for target in [(0.0, -5.0, 0.0), (0.0, 5.0, 0.0)]:
        turned = cam.turn_towards(target_world_point=target)
        rot = turned.rot_world_to_cam
        assert np.all(np.isfinite(rot))
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(rot[2], np.sign(target[1]) * np.array([0, 1, 0]), atol=1e-12)
        # The old x axis (1, 0, 0) is kept as the horizontal direction.
        np.testing.assert_allclose(rot[0], [1, 0, 0], atol=1e-12)
    with pytest.raises(ValueError, match='exactly one'):
        cam.turn_towards()
    with pytest.raises(ValueError, match='target_image_point'):
        cam.turn_towards(target_image_point=[[1, 2], [3, 4]])


def test_intrinsic_edits_move_projected_points():
    cam = Camera(K_SIMPLE)
    pts = np.array([[0.2, -0.1, 2.0], [-0.5, 0.3, 4.0]])
    base = cam.world_to_image(pts).astype(np.float64)
    pp = K_SIMPLE[:2, 2]

    np.testing.assert_allclose(cam.zoom(2).world_to_image(pts), pp + 2 * (base - pp), atol=1e-3)
    np.testing.assert_allclose(cam.zoom((2, 3)).world_to_image(pts),
                               pp + [2, 3] * (base - pp), atol=1e-3)
    np.testing.assert_allclose(cam.scale_output(0.5).world_to_image(pts), 0.5 * base, atol=1e-3)
    np.testing.assert_allclose(cam.shift_image((10, -5)).world_to_image(pts),
                               base + [10, -5], atol=1e-3)
    np.testing.assert_allclose(cam.center_principal_point((480, 640)).intrinsic_matrix[:2, 2],
                               [319.5, 239.5])
    shifted = cam.shift_to_center(base[0], (100, 200))
    np.testing.assert_allclose(shifted.world_to_image(pts[0]), [99.5, 49.5], atol=1e-3)

    sq = cam.square_pixels().intrinsic_matrix
    np.testing.assert_allclose(sq, [[450, 0, 288], [0, 450, 270], [0, 0, 1]], atol=1e-9)
    # The original camera is untouched by all of the above.
    np.testing.assert_array_equal(cam.intrinsic_matrix, K_SIMPLE)


def test_rotate_and_flip_move_projected_points():
    k = np.array([[400.0, 0, 100], [0, 400, 80], [0, 0, 1]])
    cam = Camera(k, rodrigues([0.2, 0.1, -0.3]), optical_center=(1, 2, 3))
    right_point = cam.image_to_world([140.0, 80.0], depth=2.0)  # 40 px right of the pp

    # Positive roll: image content turns counter-clockwise on screen (right -> up).
    np.testing.assert_allclose(cam.rotate(roll=np.pi / 2).world_to_image(right_point),
                               [100, 40], atol=1e-3)
    theta = 0.3
    np.testing.assert_allclose(cam.rotate(roll=theta).world_to_image(right_point),
                               [100 + 40 * np.cos(theta), 80 - 40 * np.sin(theta)], atol=1e-3)
    ahead = cam.image_to_world([100.0, 80.0], depth=2.0)
    # Positive yaw turns the view right (content moves left); positive pitch tilts it up.
    np.testing.assert_allclose(cam.rotate(yaw=0.1).world_to_image(ahead),
                               [100 - 400 * np.tan(0.1), 80], atol=1e-3)
    np.testing.assert_allclose(cam.rotate(pitch=0.1).world_to_image(ahead),
                               [100, 80 + 400 * np.tan(0.1)], atol=1e-3)

    flipped = cam.horizontal_flip()
    assert np.linalg.det(flipped.rot_world_to_cam) == pytest.approx(-1.0)
    pts = cam.image_to_world([[140.0, 60.0], [13.0, 170.0]], depth=[2.0, 5.0])
    np.testing.assert_allclose(flipped.world_to_image(pts), [[60, 60], [187, 170]], atol=1e-3)


def test_from_fov():
    cam = Camera.from_fov(8, (480, 640))
    f = 640 / (2 * np.tan(np.deg2rad(4)))
    np.testing.assert_allclose(cam.intrinsic_matrix,
                               [[f, 0, 319.5], [0, f, 239.5], [0, 0, 1]], rtol=1e-12)
    np.testing.assert_array_equal(cam.rot_world_to_cam, np.eye(3))
    np.testing.assert_array_equal(cam.optical_center, np.zeros(3))
    np.testing.assert_array_equal(cam.world_up, [0, -1, 0])
    # Horizontal FOV: the image edge ray is at 4 degrees.
    assert cam.world_to_image([np.tan(np.deg2rad(4)), 0, 1])[0] == pytest.approx(319.5 + 320,
                                                                                 abs=1e-3)


# ----------------------------------------------------------------------------------------
# Image-to-image mappings
# ----------------------------------------------------------------------------------------

def test_homography_maps_projections_between_cameras():
    cam1 = _general_camera()
    cam2 = (cam1.turn_towards(target_image_point=(500, 100)).zoom(1.3).rotate(roll=0.2)
            .shift_image((-30, 12)).horizontal_flip())
    rng = np.random.default_rng(2)
    world = _points_in_front(cam1, 50, rng)
    p1 = cam1.world_to_image(world).astype(np.float64)
    p2 = cam2.world_to_image(world).astype(np.float64)
    hom = cam1.homography_to(cam2)
    mapped = np.concatenate([p1, np.ones((50, 1))], axis=1) @ hom.T
    np.testing.assert_allclose(mapped[:, :2] / mapped[:, 2:], p2, atol=2e-3)
    np.testing.assert_allclose(cam1.reproject_points(p1, cam2), p2, atol=2e-3)

    moved = Camera(cam2.intrinsic_matrix, cam2.rot_world_to_cam, cam1.optical_center + 0.1)
    with pytest.raises(ValueError, match='optical centre'):
        cam1.homography_to(moved)
    with pytest.raises(ValueError, match='distortion-free'):
        _general_camera(DIST5).homography_to(cam2)


def _gaussian_blob_image(shape, center, sigma=1.5):
    ys, xs = np.mgrid[:shape[0], :shape[1]]
    return np.exp(-((xs - center[0]) ** 2 + (ys - center[1]) ** 2) / (2 * sigma ** 2))


def _blob_location(image):
    """Sub-pixel blob location: centroid in a 9x9 window around the maximum."""
    y, x = np.unravel_index(np.argmax(image), image.shape)
    win = image[y - 4:y + 5, x - 4:x + 5]
    yy, xx = np.mgrid[y - 4:y + 5, x - 4:x + 5]
    return np.array([np.sum(xx * win), np.sum(yy * win)]) / np.sum(win)


@pytest.mark.parametrize('coeffs', [None, DIST5, DIST8], ids=['nodist', '5coef', '8coef'])
def test_reproject_image_moves_dot_to_projection(coeffs):
    old = Camera(K_SIMPLE, rodrigues([0.05, 0.2, 0.0]), optical_center=(0.1, 0.2, 0.3),
                 distortion=coeffs)
    world_point = old.image_to_world([470.0, 110.0], depth=3.0)
    source_px = old.world_to_image(world_point)
    image = _gaussian_blob_image((480, 640), source_px)

    new = look_at_box(old, [440, 60, 70, 110], 96).rotate(roll=0.3).zoom(0.9)
    out = old.reproject_image(image, new, (96, 96))
    expected = new.world_to_image(world_point)
    assert out.shape == (96, 96)
    np.testing.assert_allclose(_blob_location(out), expected, atol=0.5)


def test_reproject_image_bilinear_nearest_border_and_antialias():
    h, w = 30, 40
    ys, xs = np.mgrid[:h, :w]
    ramp = (xs + 2.0 * ys)[..., np.newaxis] * [1.0, -1.0]  # two channels
    cam = Camera(np.array([[50.0, 0, 20], [0, 50, 15], [0, 0, 1]]))

    # Output pixel (u, v) of `new` sees the old pixel (u + 0.25, v + 0.5).
    new = cam.shift_image((-0.25, -0.5))
    out = cam.reproject_image(ramp, new, (h, w))
    oys, oxs = np.mgrid[:h, :w]
    expected = (oxs + 0.25) + 2 * (oys + 0.5)
    np.testing.assert_allclose(out[:-1, :-1, 0], expected[:-1, :-1], atol=1e-9)
    np.testing.assert_allclose(out[:-1, :-1, 1], -expected[:-1, :-1], atol=1e-9)
    # Last row samples between row h-1 and the (border) row h: blended with border_value.
    np.testing.assert_allclose(out[-1, 3, 0], 0.5 * (3.25 + 2 * (h - 1)), atol=1e-9)

    # Nearest with an integer shift copies exactly; outside pixels take the border value.
    dot = np.zeros((h, w), np.uint8)
    dot[10, 12] = 200
    out = cam.reproject_image(dot, cam.shift_image((5, 3)), (h, w), interpolation='nearest',
                              border_value=7)
    assert out.dtype == np.uint8 and out[13, 17] == 200 and out[12, 17] == 0
    assert out[1, 3] == 7 and out[5, 10] == 0

    # Per-channel border value.
    out = cam.reproject_image(np.ones((h, w, 2)), cam.shift_image((100, 0)), (h, w),
                              border_value=(3, 4))
    np.testing.assert_array_equal(out[0, 0], [3, 4])
    with pytest.raises(ValueError, match='border_value'):
        cam.reproject_image(np.ones((h, w, 2)), cam, (h, w), border_value=(1, 2, 3))

    # Antialiasing keeps the pixel grid aligned: a linear ramp is reproduced exactly.
    out = cam.reproject_image(ramp, cam, (h, w), antialias_factor=2)
    np.testing.assert_allclose(out[1:-1, 1:-1], ramp[1:-1, 1:-1], atol=1e-9)


def test_reproject_image_large_output_with_distortion():
    # (Speed is measured in benchmarks, not asserted here.)
    cam = _general_camera(DIST8)
    image = np.random.default_rng(3).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    new = look_at_box(cam, [200, 100, 150, 300], 600)
    out = cam.reproject_image(image, new, (600, 600))
    assert out.shape == (600, 600, 3) and out.dtype == np.uint8
    assert 0 < out.mean() < 255


def test_reproject_image_errors():
    cam = Camera(K_SIMPLE)
    image = np.zeros((10, 10, 3))
    with pytest.raises(ValueError, match='optical centre'):
        cam.reproject_image(image, Camera(K_SIMPLE, optical_center=(0, 0, 1)), (5, 5))
    with pytest.raises(ValueError, match='interpolation'):
        cam.reproject_image(image, cam, (5, 5), interpolation='cubic')
    with pytest.raises(ValueError, match='image'):
        cam.reproject_image(np.zeros(10), cam, (5, 5))
    with pytest.raises(ValueError, match='out_shape'):
        cam.reproject_image(image, cam, (0, 5))
    with pytest.raises(ValueError, match='antialias_factor'):
        cam.reproject_image(image, cam, (5, 5), antialias_factor=1.5)


# ----------------------------------------------------------------------------------------
# look_at_box
# ----------------------------------------------------------------------------------------

def test_look_at_box_hand_case():
    # Box centred on the principal point of an axis-aligned camera: turning is a no-op, so the
    # zoom is simply S / (box long side).
    cam = Camera(np.array([[800.0, 0, 99.5], [0, 800, 149.5], [0, 0, 1]]))
    crop = look_at_box(cam, [69.5, 49.5, 60, 200], 256)
    np.testing.assert_allclose(crop.intrinsic_matrix,
                               [[800 * 256 / 200, 0, 127.5], [0, 800 * 256 / 200, 127.5],
                                [0, 0, 1]], atol=1e-9)
    np.testing.assert_allclose(crop.rot_world_to_cam, np.eye(3), atol=1e-12)


@pytest.mark.parametrize('box', [[300, 100, 80, 200], [60, 300, 220, 90]], ids=['tall', 'wide'])
def test_look_at_box_centres_box_and_scales_long_side(box):
    cam = _general_camera(DIST5)
    side = 256
    crop = look_at_box(cam, box, side)
    assert crop.distortion is None
    k = crop.intrinsic_matrix
    assert k[0, 0] == pytest.approx(k[1, 1])
    np.testing.assert_allclose(k[:2, 2], [127.5, 127.5])
    assert abs(crop.rot_world_to_cam[0] @ cam.world_up) < 1e-12  # upright

    x, y, w, h = box
    center = np.array([x + w / 2, y + h / 2])
    np.testing.assert_allclose(cam.reproject_points(center, crop), [127.5, 127.5], atol=1e-3)
    if w < h:
        mids = [[x + w / 2, y], [x + w / 2, y + h]]
    else:
        mids = [[x, y + h / 2], [x + w, y + h / 2]]
    new_mids = cam.reproject_points(mids, crop).astype(np.float64)
    assert np.linalg.norm(new_mids[0] - new_mids[1]) == pytest.approx(side, abs=1e-3)


def test_look_at_box_errors():
    cam = Camera(K_SIMPLE)
    with pytest.raises(ValueError, match='box'):
        look_at_box(cam, [1, 2, 3], 256)
    with pytest.raises(ValueError, match='box'):
        look_at_box(cam, [1, 2, 0, 5], 256)
    with pytest.raises(ValueError, match='output_side'):
        look_at_box(cam, [1, 2, 3, 5], 0)


# ----------------------------------------------------------------------------------------
# Construction errors
# ----------------------------------------------------------------------------------------

def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match='intrinsic_matrix'):
        Camera(np.eye(2))
    with pytest.raises(ValueError, match='intrinsic_matrix'):
        Camera([[500, 0, 1], [0, 500, 1], [0, 1, 1]])
    with pytest.raises(ValueError, match='rot_world_to_cam'):
        Camera(K_SIMPLE, rot_world_to_cam=2 * np.eye(3))
    with pytest.raises(ValueError, match='rot_world_to_cam'):
        Camera(K_SIMPLE, rot_world_to_cam=np.eye(4))
    # Row-major flat matrices (the TFRecord layout) are accepted.
    flat = Camera(K_SIMPLE.reshape(-1), rodrigues([0.1, 0.2, 0.3]).reshape(-1))
    np.testing.assert_array_equal(flat.rot_world_to_cam, rodrigues([0.1, 0.2, 0.3]))
    np.testing.assert_array_equal(flat.intrinsic_matrix, K_SIMPLE)
    with pytest.raises(ValueError, match='optical_center'):
        Camera(K_SIMPLE, optical_center=(1, 2))
    with pytest.raises(ValueError, match='distortion'):
        Camera(K_SIMPLE, distortion=[0.1, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match='world_up'):
        Camera(K_SIMPLE, world_up=(0, 0, 0))
    cam = Camera(K_SIMPLE)
    with pytest.raises(ValueError, match='points'):
        cam.world_to_image(np.zeros((4, 2)))
    with pytest.raises(ValueError, match='points2d'):
        cam.image_to_camera(np.zeros((4, 3)))
    with pytest.raises(ValueError, match='imshape'):
        Camera.from_fov(8, (480,))
    with pytest.raises(ValueError, match='units'):
        Camera.from_bouguet(K_SIMPLE, DIST5, [0, 0, 0], [0, 0, 0], units='cm')
    with pytest.raises(ValueError, match='om_ext'):
        Camera.from_bouguet(K_SIMPLE, DIST5, [0, 0], [0, 0, 0])
