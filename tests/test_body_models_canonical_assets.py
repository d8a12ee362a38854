"""Tests of nlf_tf.body_models.canonical_assets: the inside test, interior sampling and
weights on hand-made closed meshes, and the asset files of the synthetic body models."""

import json
import os
import shutil

import numpy as np
import pytest

from nlf_tf.body_models import canonical_assets as ca
from nlf_tf.body_models import files, kinds, synthetic
from nlf_tf.body_models.smpl_file import ModelFileError

NUM_INTERIOR = 1500


# --------------------------------------------------------------------------------------------
# Hand-made meshes


def box_mesh(lo, hi):
    """Closed box with outward-oriented triangles: (vertices [8, 3], faces [12, 3])."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    v = np.array([[(lo, hi)[i][0], (lo, hi)[j][1], (lo, hi)[k][2]]
                  for i in (0, 1) for j in (0, 1) for k in (0, 1)])  # id = 4 i + 2 j + k
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    tri = v[f]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    inward = np.einsum('ij,ij->i', normal, tri.mean(axis=1) - v.mean(axis=0)) < 0
    f[inward] = f[inward][:, ::-1]
    return v, f


def subdivide(v, f):
    """Midpoint subdivision (4 triangles per triangle, same surface)."""
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    unique, inverse = np.unique(edges, axis=0, return_inverse=True)
    mid = len(v) + inverse.reshape(3, -1).T
    v2 = np.concatenate([v, (v[unique[:, 0]] + v[unique[:, 1]]) / 2])
    a, b, c = f.T
    ab, bc, ca_ = mid.T
    f2 = np.concatenate([np.stack(t, 1) for t in
                         ((a, ab, ca_), (ab, b, bc), (ca_, bc, c), (ab, bc, ca_))])
    return v2, f2


# A box 'person' (canonical axes, y down): overlapping closed boxes and an 11-joint skeleton.
BOXES = {
    'torso': ((-0.15, -0.5, -0.1), (0.15, 0.1, 0.1)),
    'head': ((-0.1, -0.75, -0.1), (0.1, -0.45, 0.1)),
    'left_arm': ((0.1, -0.45, -0.05), (0.7, -0.35, 0.05)),
    'right_arm': ((-0.7, -0.45, -0.05), (-0.1, -0.35, 0.05)),
    'left_leg': ((0.02, 0.05, -0.06), (0.14, 0.9, 0.06)),
    'right_leg': ((-0.14, 0.05, -0.06), (-0.02, 0.9, 0.06)),
}
BOX_JOINTS = np.array([
    (0, 0, 0), (0, -0.4, 0), (0, -0.6, 0), (0.15, -0.4, 0), (0.65, -0.4, 0),
    (-0.15, -0.4, 0), (-0.65, -0.4, 0), (0.08, 0.08, 0), (0.08, 0.85, 0), (-0.08, 0.08, 0),
    (-0.08, 0.85, 0)])
BOX_PARENTS = np.array([-1, 0, 1, 1, 3, 1, 5, 0, 7, 0, 9])


def _overlap(a, b):
    lo = np.maximum(a[0], b[0])
    hi = np.minimum(a[1], b[1])
    return float(np.prod(np.maximum(hi - lo, 0)))


def union_volume():
    boxes = [(np.array(lo), np.array(hi)) for lo, hi in BOXES.values()]
    total = sum(float(np.prod(hi - lo)) for lo, hi in boxes)
    # No three boxes share a volume, so pairwise inclusion-exclusion is exact.
    return total - sum(_overlap(boxes[i], boxes[j]) for i in range(len(boxes))
                       for j in range(i + 1, len(boxes)))


@pytest.fixture(scope='module')
def box_person():
    vs, fs, n = [], [], 0
    for lo, hi in BOXES.values():
        v, f = box_mesh(lo, hi)
        v, f = subdivide(*subdivide(v, f))
        vs.append(v)
        fs.append(f + n)
        n += len(v)
    return np.concatenate(vs).astype(np.float32), np.concatenate(fs).astype(np.int32)


@pytest.fixture(scope='module')
def box_interior(box_person):
    v, f = box_person
    return ca.build_interior(v, f, BOX_JOINTS, BOX_PARENTS, 4000, seed=3)


def inside_any_box(points):
    inside = np.zeros(len(points), bool)
    for lo, hi in BOXES.values():
        inside |= np.all((points > np.array(lo)) & (points < np.array(hi)), axis=1)
    return inside


def random_rigid(rng):
    q, r = np.linalg.qr(rng.normal(size=[3, 3]))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q, rng.normal(size=3)


def interpolate(columns, weights, nodes):
    return np.einsum('nk,nkd->nd', np.asarray(weights, np.float64),
                     np.asarray(nodes, np.float64)[columns])


# --------------------------------------------------------------------------------------------
# Geometry


def test_exact_winding_numbers_of_boxes():
    v, f = box_mesh((-1, -1, -1), (1, 1, 1))
    w = ca.exact_winding_numbers(v, f, [[0, 0, 0], [0.9, -0.5, 0.2], [1.5, 0, 0], [0, 3, 0]])
    np.testing.assert_allclose(w, [1, 1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(ca.exact_winding_numbers(v, f[:, ::-1], [[0, 0, 0]]), [-1])
    v2, f2 = box_mesh((0, -0.5, -0.5), (3, 0.5, 0.5))
    both_v, both_f = np.concatenate([v, v2]), np.concatenate([f, f2 + 8])
    w = ca.exact_winding_numbers(both_v, both_f, [[0.5, 0, 0], [2, 0, 0], [-0.5, 0, 0]])
    np.testing.assert_allclose(w, [2, 1, 1], atol=1e-12)  # overlapping parts count twice
    assert ca.signed_volume(v, f) == pytest.approx(8.0)
    assert ca.signed_volume(v, f[:, ::-1]) == pytest.approx(-8.0)


def test_tree_winding_numbers_match_exact(box_person):
    v, f = box_person
    rng = np.random.default_rng(0)
    far = rng.uniform([-0.8, -0.9, -0.3], [0.8, 1.0, 0.3], [1500, 3])
    # Points within a few mm of the surface, where only exact leaf sums are accurate.
    tri = np.asarray(v, np.float64)[f[rng.integers(0, len(f), 1500)]]
    near = tri.mean(axis=1) + rng.normal(scale=0.003, size=[1500, 3])
    points = np.concatenate([far, near])
    tree = ca.WindingNumberTree(v, f)
    exact = ca.exact_winding_numbers(v, f, points)
    assert np.abs(tree.winding_numbers(points) - exact).max() < 0.1
    np.testing.assert_array_equal(tree.is_inside(points), exact >= 0.5)
    boundary_free = np.abs(exact - np.round(exact)) < 1e-6
    np.testing.assert_array_equal((exact >= 0.5)[boundary_free],
                                  inside_any_box(points)[boundary_free])


def test_face_probabilities_proportional_to_area():
    v, f = box_mesh((0, 0, 0), (1, 2, 3))
    probs = ca.face_probabilities(v, f)
    # Each face pair of the box is half of a side: xy 1*2, xz 1*3, yz 2*3; total area 22.
    tri = v[f]
    normal_axis = np.argmax(np.abs(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])), 1)
    side_area = np.array([2 * 3, 1 * 3, 1 * 2])[normal_axis]
    np.testing.assert_allclose(probs, side_area / 2 / 22)
    assert probs.sum() == pytest.approx(1.0)


def test_bone_nodes_are_exact_lerps():
    positions, parent, child, t = ca.bone_nodes(BOX_JOINTS, BOX_PARENTS)
    np.testing.assert_allclose(
        positions, (1 - t)[:, None] * BOX_JOINTS[parent] + t[:, None] * BOX_JOINTS[child])
    assert np.all((t > 0) & (t < 1))
    counts = np.bincount(child, minlength=len(BOX_JOINTS))
    assert counts[0] == 0 and np.all(counts[1:] >= ca.MIN_BONE_NODES)
    assert np.all(counts <= ca.MAX_BONE_NODES)
    # Arm bone 0.5 m: ceil(0.5 / 0.02) = 25 nodes, clipped to 20; spine -> shoulder 0.15 m:
    # 8, raised to 10.
    assert counts[4] == 20 and counts[3] == 10


def test_interpolator_at_nodes():
    v, _ = box_mesh((-1, -1, -1), (1, 1, 1))
    joints = np.array([[0.0, -0.5, 0.0], [0.0, 0.5, 0.0]])
    interp = ca.InteriorInterpolator(v, joints, [-1, 0])
    positions, _, _, t = ca.bone_nodes(joints, [-1, 0])
    cols, weights, valid = interp.weights(np.concatenate([joints, positions[:3]]))
    assert valid.all()
    # A joint is its own column; a bone node splits onto its two joints by its lerp factor.
    dense = np.zeros([len(cols), 10])
    np.add.at(dense, (np.arange(len(cols))[:, None], cols), weights)
    expected = np.zeros_like(dense)
    expected[0, 8] = expected[1, 9] = 1
    expected[2:, 8] = 1 - t[:3]
    expected[2:, 9] = t[:3]
    np.testing.assert_allclose(dense, expected, atol=1e-9)


def test_interior_points_inside_and_uniform(box_person, box_interior):
    v, f = box_person
    points, _, _ = box_interior
    assert points.shape == (4000, 3) and points.dtype == np.float32
    assert np.all(ca.exact_winding_numbers(v, f, points) >= 0.5)
    assert np.all(inside_any_box(points))
    # Uniform over the union: the share of points in a region is its share of the volume.
    volume = union_volume()
    for region, region_volume in (
            (points[:, 0] > 0.15, 0.55 * 0.1 * 0.1),  # left arm outside the torso
            (points[:, 1] < -0.5, 0.2 * 0.25 * 0.2),  # head above the torso
            (points[:, 1] > 0.1, 2 * 0.12 * 0.8 * 0.12)):  # legs below the torso
        p = region_volume / volume
        assert abs(region.mean() - p) < 4 * np.sqrt(p * (1 - p) / len(points))


def test_interior_weights_reproduce_points_and_sum_to_one(box_person, box_interior):
    v, _ = box_person
    points, cols, weights = box_interior
    nodes = np.concatenate([v, BOX_JOINTS.astype(np.float32)])
    assert cols.dtype == np.int32 and weights.dtype == np.float32
    assert 1 <= cols.shape[1] <= ca.MAX_NONZEROS
    assert cols.min() >= 0 and cols.max() < len(nodes)
    np.testing.assert_allclose(interpolate(cols, weights, nodes), points, atol=2e-6)
    np.testing.assert_allclose(weights.sum(axis=1, dtype=np.float64), 1, atol=1e-6)
    nnz = np.count_nonzero(weights, axis=1)
    assert np.all(nnz >= 1) and np.all(nnz <= ca.MAX_NONZEROS)
    # ELLPACK layout: ascending columns first, then (0, 0) padding.
    k = np.arange(cols.shape[1])
    pad = k[None] >= nnz[:, None]
    assert np.all(cols[pad] == 0) and np.all(weights[pad] == 0)
    assert np.all(np.diff(cols, axis=1)[~pad[:, 1:]] > 0)
    # Barycentric weights of a point inside a tetrahedron are non-negative.
    assert weights.min() >= -1e-6


def test_interior_weights_move_rigidly(box_person, box_interior):
    v, _ = box_person
    points, cols, weights = box_interior
    nodes = np.concatenate([v, BOX_JOINTS]).astype(np.float64)
    rot, trans = random_rigid(np.random.default_rng(7))
    moved = interpolate(cols, weights, nodes @ rot.T + trans)
    np.testing.assert_allclose(moved, points.astype(np.float64) @ rot.T + trans, atol=1e-5)


def test_build_interior_is_deterministic_and_orientation_free(box_person, box_interior):
    v, f = box_person
    again = ca.build_interior(v, f[:, ::-1], BOX_JOINTS, BOX_PARENTS, 4000, seed=3)
    for a, b in zip(box_interior, again):
        np.testing.assert_array_equal(a, b)
    other = ca.build_interior(v, f, BOX_JOINTS, BOX_PARENTS, 50, seed=4)[0]
    assert not np.allclose(other, box_interior[0][:50])
    with pytest.raises(ValueError, match='num_points'):
        ca.build_interior(v, f, BOX_JOINTS, BOX_PARENTS, 0)


# --------------------------------------------------------------------------------------------
# Assets of the synthetic body models


@pytest.fixture(scope='module')
def body_model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('body_models')
    synthetic.write_synthetic_body_models(root)
    return str(root)


@pytest.fixture(scope='module')
def generated(body_model_dir):
    return {family: ca.generate_assets(body_model_dir, family, NUM_INTERIOR, seed=1, log=None)
            for family in kinds.FAMILIES}


def test_asset_fields_and_kinds(generated):
    for family, assets in generated.items():
        assert assets['family'] == family
        assert assets['kinds'] == tuple(f'{family}_{g}' for g in kinds.FAMILY_GENDERS[family])
        assert assets['joints'].shape == (kinds.NUM_JOINTS[family], 3)
        assert assets['num_vertices'] == len(assets['vertices'])
        assert assets['interior_points'].shape == (NUM_INTERIOR, 3)
        assert assets['seed'] == 1 and assets['format_version'] == ca.FORMAT_VERSION


def test_canonical_mesh_is_symmetric_rest_pose_with_pelvis_at_origin(body_model_dir, generated):
    for family, assets in generated.items():
        vertices, joints = assets['vertices'], assets['joints']
        np.testing.assert_array_equal(joints[0], 0)
        names = kinds.JOINT_NAMES[family]
        for i, name in enumerate(names):
            if name.startswith('left_'):
                j = names.index('right_' + name[5:])
                np.testing.assert_array_equal(joints[j], joints[i] * [-1, 1, 1])
        mirrored = vertices * np.array([-1, 1, 1], np.float32)
        diff = np.abs(mirrored[:, None] - vertices[None]).max(axis=-1).min(axis=1)
        assert diff.max() == 0
        # Independent: the reference model's zero-pose template, y negated, pelvis subtracted.
        reference = 'n' if f'{family}_n' in assets['kinds'] else 'f'
        model = files.load_body_model(body_model_dir, family, reference)
        flip = np.array([1, -1, 1])
        template = model['v_template'] * flip
        pelvis = model['J_regressor'][0] @ template
        np.testing.assert_allclose(vertices, template - pelvis, atol=1e-5)
        np.testing.assert_allclose(joints, model['J_regressor'] @ template - pelvis, atol=1e-5)
        np.testing.assert_array_equal(assets['faces'], model['faces'])
        # Head up: the canonical frame's y points down.
        assert joints[names.index('head'), 1] < 0 < joints[names.index('left_knee'), 1]


def test_face_probs_sum_to_one_and_follow_area(generated):
    for assets in generated.values():
        tri = assets['vertices'].astype(np.float64)[assets['faces']]
        area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
        assert assets['face_probs'].dtype == np.float32
        np.testing.assert_allclose(assets['face_probs'], area / area.sum(), rtol=1e-5)
        assert assets['face_probs'].sum(dtype=np.float64) == pytest.approx(1, abs=1e-6)


def test_rest_pelvis_terms_equal_regressor_products(body_model_dir, generated):
    for family, assets in generated.items():
        for g, kind in enumerate(assets['kinds']):
            model = files.load_body_model(body_model_dir, family, kind[-1])
            row = model['J_regressor'][0]
            np.testing.assert_allclose(assets['rest_pelvis'][g], row @ model['v_template'],
                                       atol=1e-6)
            shape = np.einsum('v,vcs->cs', row, model['shapedirs'])
            s = shape.shape[1]
            assert 0 < s < kinds.SHAPE_SIZE
            np.testing.assert_allclose(assets['rest_pelvis_shapedirs'][g, :, :s], shape,
                                       atol=1e-6)
            assert np.all(assets['rest_pelvis_shapedirs'][g, :, s:] == 0)
            expr = np.einsum('v,vcs->cs', row, model['exprdirs'])
            e = expr.shape[1]
            assert e == (10 if family == 'smplx' else 0)
            np.testing.assert_allclose(assets['rest_pelvis_exprdirs'][g, :, :e], expr, atol=1e-6)
            assert np.all(assets['rest_pelvis_exprdirs'][g, :, e:] == 0)
            kid = model['kid_shapedir']
            assert (kid is None) == (family == 'smplh')
            expected_kid = np.zeros(3) if kid is None else row @ kid
            np.testing.assert_allclose(assets['rest_pelvis_kiddir'][g], expected_kid, atol=1e-6)
            if kid is not None:
                assert np.abs(expected_kid).max() > 1e-3
        # Genders differ, so the rows are not copies of each other.
        assert len(np.unique(assets['rest_pelvis'], axis=0)) == len(assets['kinds'])


def test_interior_of_synthetic_models(generated):
    rng = np.random.default_rng(5)
    for family, assets in generated.items():
        vertices, faces = assets['vertices'], assets['faces']
        points = assets['interior_points']
        # The synthetic files face outward in model axes, i.e. inward in the y-down frame.
        orientation = np.sign(ca.signed_volume(vertices, faces))
        w = orientation * ca.exact_winding_numbers(vertices, faces, points[:500])
        assert np.all(w >= 0.5), family
        nodes = np.concatenate([vertices, assets['joints']])
        cols, weights = assets['interior_columns'], assets['interior_weights']
        assert cols.shape[1] <= ca.MAX_NONZEROS and cols.max() < len(nodes)
        np.testing.assert_allclose(interpolate(cols, weights, nodes), points, atol=2e-6)
        np.testing.assert_allclose(weights.sum(axis=1, dtype=np.float64), 1, atol=1e-6)
        rot, trans = random_rigid(rng)
        np.testing.assert_allclose(interpolate(cols, weights, nodes @ rot.T + trans),
                                   points @ rot.T + trans, atol=1e-5)


def test_write_and_load_round_trip(tmp_path, generated):
    path = ca.write_assets(tmp_path, 'smplx', generated['smplx'])
    assert path == os.path.join(str(tmp_path), 'canonical_smplx.npz')
    assert os.listdir(tmp_path) == ['canonical_smplx.npz']
    for source in (path, tmp_path):
        loaded = ca.load_assets(source, 'smplx')
        assert set(loaded) == set(generated['smplx'])
        for key, value in generated['smplx'].items():
            if isinstance(value, np.ndarray):
                assert loaded[key].dtype == value.dtype
                np.testing.assert_array_equal(loaded[key], value)
            else:
                assert loaded[key] == value, key
    with np.load(path, allow_pickle=False) as raw:
        assert json.loads(raw['fingerprints'].item()) == generated['smplx']['fingerprints']


def _rewrite(path, **changes):
    with np.load(path, allow_pickle=False) as raw:
        arrays = {k: raw[k] for k in raw.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    with open(path, 'wb') as f:
        np.savez(f, **arrays)


def test_load_assets_errors_name_file_and_field(tmp_path, generated):
    path = ca.write_assets(tmp_path, 'smpl', generated['smpl'])
    good = generated['smpl']
    n, k = good['interior_weights'].shape
    cases = [
        (dict(interior_weights=None), 'interior_weights', 'missing'),
        (dict(interior_weights=np.zeros([n, k + 1], np.float32)), 'interior_weights',
         f'shape \\[{n}, {k}\\]'),
        (dict(vertices=good['vertices'][:, :2]), 'vertices', 'shape'),
        (dict(joints=np.zeros([52, 3], np.float32)), 'joints', 'shape \\[24, 3\\]'),
        (dict(rest_pelvis_shapedirs=np.zeros([3, 3, 10], np.float32)),
         'rest_pelvis_shapedirs', 'shape \\[3, 3, 128\\]'),
        (dict(interior_columns=good['interior_columns'] + 10000), 'interior_columns',
         'column ids'),
        (dict(interior_columns=good['interior_columns'].astype(np.float32)),
         'interior_columns', 'integer'),
        (dict(faces=good['faces'] + 100000), 'faces', 'vertex ids'),
        (dict(format_version=np.array(99)), 'format_version', 'regenerate'),
        (dict(kinds=np.array(['smplx_n'])), 'kinds', "'smplx_n' is not a kind of smpl"),
        (dict(fingerprints=np.array('{oops')), 'fingerprints', 'JSON'),
    ]
    for changes, field, message in cases:
        ca.write_assets(tmp_path, 'smpl', good)
        _rewrite(path, **changes)
        with pytest.raises(ca.CanonicalAssetError, match=message) as info:
            ca.load_assets(path, 'smpl')
        assert info.value.file == path and info.value.field == field, (field, info.value)
        assert isinstance(info.value, ModelFileError)
    ca.write_assets(tmp_path, 'smpl', good)
    with pytest.raises(ca.CanonicalAssetError) as info:
        ca.load_assets(path, 'smplx')  # an explicitly named file of another family
    assert info.value.field == 'family'
    with pytest.raises(ca.CanonicalAssetError, match='nlf-tf-canonical') as info:
        ca.load_assets(tmp_path, 'smplx')  # no smplx file in the folder
    assert info.value.field == '<file>' and 'canonical_smplx.npz' in info.value.file
    os.replace(path, tmp_path / 'canonical_smplx.npz')
    with pytest.raises(ca.CanonicalAssetError, match="holds 'smpl' assets") as info:
        ca.load_assets(tmp_path, 'smplx')
    assert info.value.field == 'family'
    (tmp_path / 'canonical_smplh.npz').write_bytes(b'not a zip')
    with pytest.raises(ca.CanonicalAssetError, match='cannot read') as info:
        ca.load_assets(tmp_path, 'smplh')
    assert info.value.field == '<file>'


def _resave_npz(path, **changes):
    with np.load(path, allow_pickle=False) as raw:
        arrays = {k: raw[k] for k in raw.files}
    arrays.update(changes)
    np.savez(path, **arrays)


def test_ensure_assets_regenerates_only_stale_files(tmp_path, body_model_dir):
    models = tmp_path / 'models'
    shutil.copytree(os.path.join(body_model_dir, 'smplx'), models / 'smplx')
    shutil.copytree(os.path.join(body_model_dir, 'smpl'), models / 'smpl')
    out = models / ca.ASSETS_SUBDIR
    lines = []
    paths = ca.ensure_assets(models, num_interior=300, log=lines.append)
    assert sorted(paths) == ['smpl', 'smplx']  # only the families with files
    assert any('canonical_smplx.npz: missing; generating' in line for line in lines)
    (out / 'notes.txt').write_text('unrelated')
    stat = {f: os.stat(p) for f, p in paths.items()}

    lines = []
    assert ca.ensure_assets(models, log=lines.append) == paths
    assert sum('up to date' in line for line in lines) == 2
    for family, path in paths.items():
        assert os.stat(path).st_mtime_ns == stat[family].st_mtime_ns
        assert os.stat(path).st_ino == stat[family].st_ino

    # Change one SMPL-X model file: only canonical_smplx.npz is rebuilt, as a new file.
    male = models / 'smplx' / 'SMPLX_MALE.npz'
    with np.load(male) as raw:
        template = raw['v_template']
    _resave_npz(male, v_template=template + [0.01, 0.02, 0.03])
    old = ca.load_assets(out, 'smplx')
    lines = []
    ca.ensure_assets(models, log=lines.append)
    assert any('model files changed (smplx_m)' in line for line in lines), lines
    new = ca.load_assets(out, 'smplx')
    assert new['fingerprints']['smplx_m'] == files.model_fingerprint(male)
    assert new['fingerprints']['smplx_m'] != old['fingerprints']['smplx_m']
    g = new['kinds'].index('smplx_m')
    np.testing.assert_allclose(new['rest_pelvis'][g], old['rest_pelvis'][g] + [0.01, 0.02, 0.03],
                               atol=1e-6)
    assert os.stat(paths['smplx']).st_ino != stat['smplx'].st_ino  # replaced by a rename
    assert os.stat(paths['smpl']).st_mtime_ns == stat['smpl'].st_mtime_ns
    assert sorted(os.listdir(out)) == ['canonical_smpl.npz', 'canonical_smplx.npz', 'notes.txt']
    assert (out / 'notes.txt').read_text() == 'unrelated'
    assert len(new['interior_points']) == 300  # kept from the file unless asked otherwise

    # A removed model file changes the kinds; other counts / seeds are regenerated on request.
    os.remove(models / 'smplx' / 'SMPLX_FEMALE.npz')
    ca.ensure_assets(models, families=['smplx'], log=None)
    assert ca.load_assets(out, 'smplx')['kinds'] == ('smplx_m', 'smplx_n')
    lines = []
    ca.ensure_assets(models, families=['smplx'], num_interior=200, seed=2, log=lines.append)
    assert 'has 300 interior points, 200 requested' in lines[0]
    again = ca.load_assets(out, 'smplx')
    assert len(again['interior_points']) == 200 and again['seed'] == 2
    lines = []
    ca.ensure_assets(models, families=['smplx'], num_interior=200, seed=3, log=lines.append)
    assert 'made with seed 2, seed 3 requested' in lines[0]

    # A damaged file is regenerated.
    (out / 'canonical_smpl.npz').write_bytes(b'garbage')
    lines = []
    ca.ensure_assets(models, families=['smpl'], num_interior=300, log=lines.append)
    assert 'unusable' in lines[0]
    assert ca.load_assets(out, 'smpl')['kinds'] == ('smpl_f', 'smpl_m', 'smpl_n')


def test_ensure_assets_errors(tmp_path, body_model_dir):
    with pytest.raises(ModelFileError, match='no body-model files'):
        ca.ensure_assets(tmp_path, log=None)
    with pytest.raises(ModelFileError, match='does not exist'):
        ca.ensure_assets(tmp_path / 'missing', log=None)
    with pytest.raises(ModelFileError) as info:
        ca.ensure_assets(tmp_path, families=['smplh'], log=None)
    assert 'SMPLH' in info.value.file and info.value.field == '<file>'
    with pytest.raises(ValueError, match='unknown body-model family'):
        ca.ensure_assets(body_model_dir, canonical_dir=tmp_path, families=['mano'], log=None)
    # A file of another family in the smplx folder: the loader's error names the file.
    os.makedirs(tmp_path / 'smplx')
    shutil.copy(os.path.join(body_model_dir, 'smplh', 'SMPLH_MALE.pkl'),
                tmp_path / 'smplx' / 'SMPLX_MALE.pkl')
    with pytest.raises(ModelFileError) as info:
        ca.ensure_assets(tmp_path, log=None)
    assert info.value.field == 'kintree_table' and 'SMPLX_MALE.pkl' in info.value.file
    assert not os.path.exists(tmp_path / ca.ASSETS_SUBDIR / 'canonical_smplx.npz')


def test_build_interior_rejects_open_mesh():
    v, f = box_mesh((0, 0, 0), (1, 1, 1))
    v, f = subdivide(v, f)
    bottom = np.all(v[f][:, :, 1] == 0, axis=1)  # only the y = 0 side: w < 0.5 everywhere
    with pytest.raises(ValueError, match='closed'):
        ca.build_interior(v, f[bottom], [[0.5, 0.5, 0.5]], [-1], 10)
