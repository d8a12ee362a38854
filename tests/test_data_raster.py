"""Triangle rasterisation of the synthetic dataset writers (nlf_tf/data/raster.py)."""

import numpy as np
import pytest

from nlf_tf.data import raster


def test_rasterize_fills_triangles_at_pixel_centres():
    points = np.array([[0.5, 0.5], [4.5, 0.5], [0.5, 4.5], [6.0, 6.0]])
    faces = np.array([[0, 1, 2]])
    pix, depth, face = raster.rasterize(points, np.array([1.0, 2.0, 3.0, 1.0]), faces, (6, 8))
    covered = {(int(i) // 8, int(i) % 8) for i in pix}
    # Pixel centres (x, y) with x, y >= 1 and x + y <= 5 lie inside the half-square.
    assert covered == {(y, x) for y in range(1, 5) for x in range(1, 5) if x + y <= 5}
    i = list(pix).index(1 * 8 + 1)  # pixel (1, 1): barycentrics (0.75, 0.125, 0.125)
    assert depth[i] == pytest.approx(0.75 * 1 + 0.125 * 2 + 0.125 * 3)
    assert np.all(face == 0)


def test_rasterize_square_covers_exactly_the_pixel_centres_inside():
    # square [1.5, 5.5] x [0.5, 3.5] as two triangles: pixel centres x 2..5, y 1..3
    points = np.array([[1.5, 0.5], [5.5, 0.5], [5.5, 3.5], [1.5, 3.5]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    face_id = raster.visible_faces(points, np.ones(4), faces, (6, 8))
    expected = np.zeros((6, 8), bool)
    expected[1:4, 2:6] = True
    np.testing.assert_array_equal(face_id >= 0, expected)
    # the diagonal from (1.5, 0.5) to (5.5, 3.5) splits the square: (5, 1) is below-right of it
    assert face_id[1, 5] == 0 and face_id[3, 2] == 1


def test_rasterize_zbuffer_keeps_the_nearer_triangle_in_any_order():
    points = np.array([[0.0, 0.0], [9.0, 0.0], [0.0, 9.0], [1.0, 1.0], [8.0, 1.0], [1.0, 8.0]])
    depth = np.array([5.0, 5.0, 5.0, 2.0, 2.0, 2.0])
    for faces, near in ((np.array([[0, 1, 2], [3, 4, 5]]), 1),
                        (np.array([[3, 4, 5], [0, 1, 2]]), 0)):
        face_id = raster.visible_faces(points, depth, faces, (10, 10))
        assert face_id[2, 2] == near   # inside both: the nearer one
        assert face_id[0, 0] == 1 - near  # only the far one
        assert face_id[9, 9] == -1
    # triangles behind the camera are not drawn
    face_id = raster.visible_faces(points, -depth, np.array([[0, 1, 2]]), (10, 10))
    assert np.all(face_id == -1)


def test_equal_depths_resolve_to_the_larger_face_id_and_min_depth_drops_triangles():
    points = np.array([[0.0, 0.0], [9.0, 0.0], [0.0, 9.0]])
    faces = np.array([[0, 1, 2], [0, 1, 2]])
    face_id = raster.visible_faces(points, np.full(3, 2.0), faces, (10, 10))
    assert face_id[2, 2] == 1
    assert np.all(raster.visible_faces(points, np.full(3, 2.0), faces, (10, 10),
                                       min_depth=2.0) == -1)


def test_face_shading_is_brightest_facing_the_camera():
    # Face 0 lies in the plane z = 5 (normal along z), its centre at (0, -1/3, 5); face 1 lies
    # in the plane x = 0, seen edge-on from the camera at the origin.
    cam_points = np.array([[-1.0, -1.0, 5.0], [1.0, -1.0, 5.0], [0.0, 1.0, 5.0],
                           [0.0, 0.0, 5.0], [0.0, 1.0, 5.0], [0.0, 0.0, 7.0]])
    shade = raster.face_shading(cam_points, np.array([[0, 1, 2], [3, 4, 5]]))
    np.testing.assert_allclose(shade, [0.35 + 0.65 * 5 / np.sqrt(25 + 1 / 9), 0.35])
