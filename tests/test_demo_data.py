"""Tests of the procedural demo data (nlf_tf/demo_data.py) and the spec loader (nlf_tf/specs.py)."""

import copy

import numpy as np
import pytest

from nlf_tf import demo_data
from nlf_tf import specs

SKELETON = demo_data.load_demo_skeleton()
J = SKELETON.num_joints
CATEGORY_FIELDS = {
    'param': ['image', 'intrinsics', 'point_ids', 'canonical_points', 'point_validity',
              'coords3d_true', 'root_index'],
    'kp3d': ['image', 'intrinsics', 'point_ids', 'canonical_points', 'point_validity',
             'coords3d_true', 'root_index'],
    'dense': ['image', 'intrinsics', 'point_ids', 'canonical_points', 'point_validity',
              'coords2d_true'],
    'kp2d': ['image', 'intrinsics', 'point_ids', 'canonical_points', 'point_validity',
             'coords2d_true'],
}


@pytest.fixture(scope='module')
def examples():
    """A few examples per category at 128 px (cached for the module)."""
    return {c: demo_data.generate_examples(c, 6, 128, 40, seed=5, return_render_info=True)
            for c in demo_data.CATEGORIES}


def pinhole(points, intrinsics):
    """Independent projection: K @ X, divided by the third coordinate."""
    homogeneous = np.einsum('nij,nmj->nmi', intrinsics.astype(np.float64), points)
    return homogeneous[..., :2] / homogeneous[..., 2:]


def segment_distance(points, a, b):
    """Distance of points [..., 3] to the segments a-b [..., 3] (broadcast)."""
    d = b - a
    t = np.clip(np.sum((points - a) * d, -1) / np.sum(d * d, -1), 0, 1)
    return np.linalg.norm(points - (a + t[..., None] * d), axis=-1)


# --------------------------------------------------------------------------------------
# Skeleton and spec
# --------------------------------------------------------------------------------------

def test_joint_table_is_exactly_mirror_symmetric():
    names, canonical = demo_data.demo_joint_table()
    spec = specs.load_spec('demo')
    assert names == spec['joint_names'] and len(names) == 16
    assert canonical.dtype == np.float32 and canonical.shape == (16, 3)
    index = {n: i for i, n in enumerate(names)}
    num_left = 0
    for i, name in enumerate(names):
        if name.startswith('l'):
            num_left += 1
            partner = index['r' + name[1:]]
            np.testing.assert_array_equal(canonical[partner], canonical[i] * [-1, 1, 1])
            assert canonical[i, 0] > 0
        elif not name.startswith('r'):
            assert canonical[i, 0] == 0
    assert num_left == 6
    assert np.all(canonical[:, 2] == 0)  # a flat T-pose
    # y points down: head above the pelvis above the ankles.
    assert canonical[index['head'], 1] < canonical[index['pelv'], 1] < canonical[index['lank'], 1]
    assert SKELETON.root == index['pelv']
    np.testing.assert_array_equal(SKELETON.mirror[SKELETON.mirror], np.arange(16))
    assert SKELETON.mirror[index['lwri']] == index['rwri']


def test_bone_colours_are_mirror_symmetric_and_distinct_otherwise():
    bone_of = {tuple(b): k for k, b in enumerate(SKELETON.bones.tolist())}
    for k, (i, j) in enumerate(SKELETON.bones):
        mirrored = bone_of[(SKELETON.mirror[i], SKELETON.mirror[j])]
        np.testing.assert_array_equal(SKELETON.colours[k], SKELETON.colours[mirrored])
    # 15 bones = 3 centre bones + 6 mirror pairs -> 9 different colours.
    assert len({tuple(c) for c in SKELETON.colours.tolist()}) == 9


def test_spec_validation_names_the_field():
    spec = specs.load_spec('demo')
    broken = copy.deepcopy(spec)
    broken['canonical_positions']['rwri'][0] = -0.7  # lwri has x = 0.71
    with pytest.raises(ValueError, match='canonical_positions'):
        demo_data.skeleton_from_spec(broken)
    broken = copy.deepcopy(spec)
    broken['mirror_pairs'] = broken['mirror_pairs'][1:]
    with pytest.raises(ValueError, match='mirror_pairs'):
        demo_data.skeleton_from_spec(broken)
    broken = copy.deepcopy(spec)
    broken['bones'] = broken['bones'][1:]  # pelv -> spin missing: spin never placed
    with pytest.raises(ValueError, match='bones'):
        demo_data.skeleton_from_spec(broken)
    with pytest.raises(FileNotFoundError, match='no_such_spec'):
        specs.load_spec('no_such_spec')
    # The copy shipped inside the package wins over the repository's data_specs/.
    first, second = specs.spec_search_dirs()
    assert first.replace('\\', '/').endswith('nlf_tf/_data_specs')
    assert second.replace('\\', '/').endswith('/data_specs')


# --------------------------------------------------------------------------------------
# Geometry of the sampled points
# --------------------------------------------------------------------------------------

def test_bone_point_sampling_is_rigid_with_the_bone():
    rng = np.random.default_rng(0)
    people = demo_data.sample_people(rng, 4)
    joints, rotations, scale = people['joints'], people['bone_rotations'], people['body_scale']
    bone, frac, offset = demo_data.sample_bone_points(rng, (4, 50))
    canonical, posed = demo_data.bone_point_positions(
        bone, frac, offset, joints=joints, bone_rotations=rotations, body_scale=scale)

    c = SKELETON.canonical.astype(np.float64)
    for n in range(4):
        for m in range(50):
            k, a = bone[n, m], frac[n, m]
            i, j = SKELETON.bones[k]
            expected_c = (1 - a) * c[i] + a * c[j] + offset[n, m]
            expected_p = ((1 - a) * joints[n, i] + a * joints[n, j] +
                          scale[n] * rotations[n, k] @ offset[n, m])
            np.testing.assert_allclose(canonical[n, m], expected_c, atol=1e-12)
            np.testing.assert_allclose(posed[n, m], expected_p, atol=1e-12)
            # The offset is inside the capsule radius and perpendicular to the bone ...
            assert np.linalg.norm(offset[n, m]) <= SKELETON.radii[k] + 1e-9
            assert abs(np.dot(offset[n, m], c[j] - c[i])) < 1e-9
            # ... and the bone frame really is the bone's: the posed bone is the rotated
            # canonical bone, so the posed point keeps its scaled distance from the posed axis.
            posed_bone = joints[n, j] - joints[n, i]
            rotated = rotations[n, k] @ (c[j] - c[i])
            np.testing.assert_allclose(np.cross(posed_bone, rotated), 0, atol=1e-9)
            assert np.dot(posed_bone, rotated) > 0
            axis_distance = np.linalg.norm(np.cross(posed[n, m] - joints[n, i], posed_bone) /
                                           np.linalg.norm(posed_bone))
            np.testing.assert_allclose(axis_distance, scale[n] * np.linalg.norm(offset[n, m]),
                                       atol=1e-9)

    # Limb lengths scale by body scale x per-bone jitter, within 0.9 * 0.95 .. 1.1 * 1.05.
    for k, (i, j) in enumerate(SKELETON.bones):
        ratio = (np.linalg.norm(joints[:, j] - joints[:, i], axis=-1) /
                 np.linalg.norm(c[j] - c[i]))
        assert np.all((ratio >= 0.9 * 0.95 - 1e-9) & (ratio <= 1.1 * 1.05 + 1e-9))
    np.testing.assert_array_equal(joints[:, SKELETON.root], 0)


def test_param_points_lie_in_their_capsules(examples):
    ex = examples['param']
    num_points = ex['point_ids'].shape[1]
    num_surface = num_points - J
    bones = SKELETON.bones
    c = SKELETON.canonical.astype(np.float64)
    canonical = ex['canonical_points'][:, :num_surface, None].astype(np.float64)
    canonical_distance = segment_distance(canonical, c[bones[:, 0]], c[bones[:, 1]])
    # Every surface point is within its capsule radius of some canonical bone.
    assert np.all(np.min(canonical_distance - SKELETON.radii, axis=-1) <= 1e-5)
    # The same holds in 3D, with the joints of the same example and radii scaled <= 1.1.
    coords = ex['coords3d_true'].astype(np.float64)
    joints = coords[:, num_surface:]
    posed_distance = segment_distance(
        coords[:, :num_surface, None], joints[:, None, bones[:, 0]], joints[:, None, bones[:, 1]])
    assert np.all(np.min(posed_distance - 1.1 * SKELETON.radii, axis=-1) <= 1e-5)
    # The dense canonical points are not all on one bone.
    assert len(np.unique(np.argmin(canonical_distance - SKELETON.radii, -1))) > 5


# --------------------------------------------------------------------------------------
# Generated examples
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize('category', demo_data.CATEGORIES)
def test_fields_shapes_and_dtypes(category):
    ex = demo_data.generate_examples(category, 3, 64, 32, seed=1)
    assert list(ex) == CATEGORY_FIELDS[category]
    expected = dict(image=((3, 64, 64, 3), np.float32), intrinsics=((3, 3, 3), np.float32),
                    point_ids=((3, 32), np.int32), canonical_points=((3, 32, 3), np.float32),
                    point_validity=((3, 32), np.bool_), coords3d_true=((3, 32, 3), np.float32),
                    root_index=((3,), np.int32), coords2d_true=((3, 32, 2), np.float32))
    for key, value in ex.items():
        assert (value.shape, value.dtype) == expected[key], key
    assert ex['image'].min() >= 0 and ex['image'].max() <= 1
    k = ex['intrinsics']
    np.testing.assert_array_equal(k[:, 0, 0], k[:, 1, 1])  # square pixels
    np.testing.assert_array_equal(k[:, :2, 2], 31.5)  # principal point at the crop centre
    np.testing.assert_array_equal(k[:, 2], np.tile([0, 0, 1], (3, 1)))
    np.testing.assert_array_equal(k[:, [0, 1], [1, 0]], 0)
    assert np.all(k[:, 0, 0] > 0)


@pytest.mark.parametrize('category', demo_data.CATEGORIES)
def test_joints_project_onto_the_rendered_person(examples, category):
    ex = examples[category]
    side = ex['image'].shape[1]
    changed = np.any(ex['image'] != ex['background'], axis=-1)
    # The person is everything that is not background; the background is untouched elsewhere.
    np.testing.assert_array_equal(changed, ex['bone_index'] >= 0)
    assert 0.05 < np.mean(changed) < 0.6

    if category in ('param', 'kp3d'):
        coords3d = ex['coords3d_true'].astype(np.float64)
        coords3d[~ex['point_validity']] = [0, 0, 1]  # avoid 0 / 0 in the padding
        coords2d = pinhole(coords3d, ex['intrinsics'])
        assert np.all(ex['coords3d_true'][..., 2][ex['point_validity']] > 2)
    else:
        coords2d = ex['coords2d_true'].astype(np.float64)
    # Joint slots: the last J of param, those with a point_id elsewhere.
    is_joint = ex['point_ids'] >= 0
    if category == 'param':
        is_joint[:, -J:] = True
    is_joint &= ex['point_validity']
    pixels = np.round(coords2d).astype(int)
    inside = np.all((pixels >= 0) & (pixels < side), axis=-1) & is_joint
    assert inside.sum() >= 0.9 * is_joint.sum()
    n, m = np.nonzero(inside)
    on_person = ex['bone_index'][n, pixels[n, m, 1], pixels[n, m, 0]] >= 0
    assert np.all(on_person)
    difference = np.abs(ex['image'] - ex['background'])[n, pixels[n, m, 1], pixels[n, m, 0]]
    assert np.all(difference.max(axis=-1) > 0.02)


def test_param_layout(examples):
    ex = examples['param']
    num_points = ex['point_ids'].shape[1]
    np.testing.assert_array_equal(ex['point_ids'], -1)
    assert np.all(ex['point_validity'])
    np.testing.assert_array_equal(ex['root_index'], num_points - J + SKELETON.root)
    np.testing.assert_array_equal(ex['canonical_points'][:, -J:],
                                  np.broadcast_to(SKELETON.canonical, (6, J, 3)))


@pytest.mark.parametrize('category', ['kp3d', 'kp2d'])
def test_dropped_joints_give_ragged_rows(category):
    ex = demo_data.generate_examples(category, 40, 32, 32, seed=2)
    coords = ex['coords3d_true'] if category == 'kp3d' else ex['coords2d_true']
    counts = ex['point_validity'].sum(axis=1)
    assert counts.min() < J and counts.max() == J  # some rows shorter, some complete
    for row in range(40):
        k = counts[row]
        np.testing.assert_array_equal(ex['point_validity'][row], np.arange(32) < k)
        ids = ex['point_ids'][row]
        assert len(set(ids[:k].tolist())) == k and np.all((ids[:k] >= 0) & (ids[:k] < J))
        np.testing.assert_array_equal(ids[k:], -1)
        np.testing.assert_array_equal(coords[row, k:], 0)  # padded coordinates are 0
        assert np.all(np.any(coords[row, :k] != 0, axis=-1))
        np.testing.assert_array_equal(ex['canonical_points'][row, :k], 0)  # from the table
        filler = ex['canonical_points'][row, k:]
        assert np.all(np.any(filler != 0, axis=-1))
        low, high = SKELETON.canonical.min(0) - 0.1, SKELETON.canonical.max(0) + 0.1
        assert np.all((filler >= low) & (filler <= high))
        if category == 'kp3d':
            root = ex['root_index'][row]
            if SKELETON.root in ids[:k]:
                assert ids[root] == SKELETON.root
            else:
                assert root == -1
    if category == 'kp3d':
        assert np.any(ex['root_index'] == -1) and np.any(ex['root_index'] > 0)
    # Joint order is shuffled per example: the joint ids are not always sorted.
    assert any(np.any(np.diff(ex['point_ids'][r, :counts[r]]) < 0) for r in range(40))


def test_dense_layout():
    num_points = 40
    ex = demo_data.generate_examples('dense', 20, 32, num_points, seed=4)
    counts = ex['point_validity'].sum(axis=1)
    extra = counts - J
    max_extra = num_points - J
    assert np.all((extra >= (max_extra + 1) // 2) & (extra <= max_extra))
    assert len(np.unique(counts)) > 1
    for row in range(20):
        k = counts[row]
        np.testing.assert_array_equal(ex['point_validity'][row], np.arange(num_points) < k)
        np.testing.assert_array_equal(np.sort(ex['point_ids'][row, :J]), np.arange(J))
        np.testing.assert_array_equal(ex['point_ids'][row, J:], -1)
        np.testing.assert_array_equal(ex['canonical_points'][row, :J], 0)
        np.testing.assert_array_equal(ex['coords2d_true'][row, k:], 0)
        # Capsule points: canonical positions within a capsule of the canonical skeleton.
        c = SKELETON.canonical.astype(np.float64)
        distance = segment_distance(ex['canonical_points'][row, J:k, None].astype(np.float64),
                                    c[SKELETON.bones[:, 0]], c[SKELETON.bones[:, 1]])
        assert np.all(np.min(distance - SKELETON.radii, axis=-1) <= 1e-5)


def test_render_depth_test_keeps_the_nearest_capsule():
    # Two crossing capsules on a black 21 x 21 image: bone 0 horizontal at 5 m, bone 1 vertical
    # at 4 m. Both orders of the bones must show bone 1 at the crossing.
    background = np.zeros((1, 21, 21, 3), np.float32)
    ends2d = np.array([[[[2, 10], [18, 10]], [[10, 2], [10, 18]]]], np.float64)
    colours = np.array([[1, 0, 0], [0, 0, 1]], np.float32)
    for order in ([0, 1], [1, 0]):
        depth = np.array([[[5.0, 5.0], [4.0, 4.0]]])[:, order]
        image, bone = demo_data._render_chunk(
            background, ends2d[:, order], depth, np.full((1, 2, 2), 2.5),
            np.full((1, 2), 0.05), colours[order])
        blue = order.index(1)
        assert bone[0, 10, 10] == blue and image[0, 10, 10, 2] > 0 and image[0, 10, 10, 0] == 0
        assert bone[0, 10, 3] == 1 - blue and bone[0, 3, 10] == blue
        assert bone[0, 0, 0] == -1 and np.all(image[0, 0, 0] == 0)
        # Proximal end darker than the distal end along the horizontal bone.
        assert image[0, 10, 3, 0] < image[0, 10, 17, 0]


# --------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------

BATCH_SIZES = dict(param=2, kp3d=3, dense=2, kp2d=3)


def make_dataset(**kwargs):
    args = dict(proc_side=64, num_points=32, batch_sizes=BATCH_SIZES, seed=7, pool_size=8)
    args.update(kwargs)
    return demo_data.make_demo_dataset(**args)


def to_numpy(batch):
    return {c: {k: v.numpy() for k, v in fields.items()} for c, fields in batch.items()}


def assert_batches_equal(a, b):
    assert list(a) == list(b)
    for category in a:
        assert list(a[category]) == list(b[category])
        for key in a[category]:
            np.testing.assert_array_equal(a[category][key], b[category][key])


def test_dataset_is_deterministic_and_resumable():
    run = [to_numpy(b) for b in make_dataset(num_steps=6)]
    assert len(run) == 6
    again = [to_numpy(b) for b in make_dataset().take(6)]
    for a, b in zip(run, again):
        assert_batches_equal(a, b)
    resumed = [to_numpy(b) for b in make_dataset(start_step=3, num_steps=6)]
    assert len(resumed) == 3
    for a, b in zip(run[3:], resumed):
        assert_batches_equal(a, b)
    # Steps draw different examples; another seed gives other data.
    assert not np.array_equal(run[0]['kp3d']['image'], run[1]['kp3d']['image'])
    other = to_numpy(next(iter(make_dataset(seed=8))))
    assert not np.array_equal(run[0]['param']['coords3d_true'], other['param']['coords3d_true'])


def test_dataset_elements_come_from_the_pool():
    batch = to_numpy(next(iter(make_dataset())))
    assert list(batch) == list(demo_data.CATEGORIES)
    for category, size in BATCH_SIZES.items():
        fields = batch[category]
        assert list(fields) == CATEGORY_FIELDS[category]
        assert fields['image'].dtype == np.float32 and fields['image'].shape == (size, 64, 64, 3)
        pool = demo_data.generate_examples(category, 8, 64, 32, seed=7)
        key = 'coords3d_true' if 'coords3d_true' in pool else 'coords2d_true'
        chosen = []
        for row in range(size):
            match = [i for i in range(8) if np.array_equal(pool[key][i], fields[key][row])]
            assert len(match) == 1
            i = match[0]
            chosen.append(i)
            for field in pool:
                if field == 'image':  # stored as uint8 in the pool
                    np.testing.assert_allclose(fields[field][row], pool[field][i], atol=0.5 / 255 + 1e-6)
                else:
                    np.testing.assert_array_equal(fields[field][row], pool[field][i])
        assert len(set(chosen)) == size  # drawn without replacement


def test_zero_batch_size_is_allowed():
    batch = next(iter(make_dataset(batch_sizes=dict(param=2, kp3d=0, dense=0, kp2d=1))))
    assert batch['kp3d']['image'].shape == (0, 64, 64, 3)
    assert batch['dense']['coords2d_true'].shape == (0, 32, 2)


@pytest.mark.parametrize('kwargs, field', [
    (dict(num_points=20), 'num_points'),
    (dict(batch_sizes=dict(param=2, kp3d=3, dense=2)), 'batch_sizes'),
    (dict(batch_sizes=dict(param=9, kp3d=3, dense=2, kp2d=3)), "batch_sizes\\['param'\\]"),
    (dict(seed=-1), 'seed'),
    (dict(proc_side=2.5), 'proc_side'),
    (dict(start_step=5, num_steps=3), 'num_steps'),
    (dict(pool_size=0), 'pool_size'),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_dataset(**kwargs)


def test_bad_category_and_minimum_points():
    with pytest.raises(ValueError, match='category'):
        demo_data.generate_examples('smpl', 2, 32, 32, seed=0)
    assert demo_data.min_num_points() == J + demo_data.MIN_SURFACE_POINTS
    with pytest.raises(ValueError, match=f'num_points must be >= {J + 8}'):
        demo_data.generate_examples('param', 2, 32, J + 7, seed=0)
    demo_data.generate_examples('param', 2, 32, J + 8, seed=0)
