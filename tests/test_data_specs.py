"""The dataset specs in data_specs/: keys, joint lists, mirror pairs, thresholds, weights and the
canonical positions (re-derived here from the rules written in data_specs/README.md)."""

import math

import numpy as np
import pytest

from nlf_tf import joint_table, specs

DATASETS = ('coco', 'coco_wholebody', 'densepose_coco', 'mads', 'agora', 'behave')
TABLE_DATASETS = ('coco', 'coco_wholebody', 'densepose_coco', 'mads')
COCO17 = ['nose', 'leye', 'reye', 'lear', 'rear', 'lsho', 'rsho', 'lelb', 'relb', 'lwri', 'rwri',
          'lhip', 'rhip', 'lkne', 'rkne', 'lank', 'rank']


@pytest.mark.parametrize('name', DATASETS)
def test_spec_parses_and_has_the_required_keys(name):
    spec = joint_table.validate_spec(name)
    for key in joint_table.REQUIRED_KEYS:
        assert key in spec, key
    assert spec['name'] == name
    assert isinstance(spec['description'], str) and len(spec['description']) > 20
    assert isinstance(spec['canonical_note'], str) and spec['canonical_note']
    for split, entries in spec['files']['splits'].items():
        assert entries and all(e['kind'] in ('file', 'dir', 'glob') for e in entries.values())


def test_categories_suffixes_roots_and_counts():
    expected = {  # name: (category, suffix, root, number of joints, number of table joints)
        'coco': ('kp2d', '_coco', None, 17, 17),
        'coco_wholebody': ('kp2d', '_coco', None, 133, 133),
        'densepose_coco': ('dense', '_coco', None, 17, 17),
        'mads': ('kp3d', '_mads', 'pelv', 19, 19),
        'agora': ('param', '_smplx', 'pelv', 55, 0),
        'behave': ('param', '_smplh', 'pelv', 52, 0),
    }
    for name, (category, suffix, root, n, n_table) in expected.items():
        spec = specs.load_spec(name)
        assert (spec['category'], spec['suffix'], spec['root_joint']) == (category, suffix, root)
        assert len(spec['joint_names']) == n == len(set(spec['joint_names']))
        assert len(joint_table.table_joint_names(spec)) == n_table
        assert len(spec['canonical_positions']) == n_table


def test_coco_family_joint_lists():
    assert specs.load_spec('coco')['joint_names'] == COCO17
    assert specs.load_spec('densepose_coco')['joint_names'] == COCO17
    wb = specs.load_spec('coco_wholebody')
    names = wb['joint_names']
    assert names[:17] == COCO17
    assert names[17:23] == ['ltoe', 'ltoe2', 'lhee', 'rtoe', 'rtoe2', 'rhee']
    # 68 face points: iBUG order, jaw right -> chin -> left.
    assert names[23:40] == [f'rface{i}' for i in range(1, 9)] + ['chin'] + [
        f'lface{i}' for i in range(8, 0, -1)]
    assert names[23 + 27:23 + 31] == ['nose1', 'nose2', 'nose3', 'nose4']  # iBUG 28..31
    assert names[23 + 36] == 'reye1' and names[23 + 45] == 'leye1'  # iBUG 37 / 46 outer corners
    assert names[23 + 48] == 'rmouth1' and names[23 + 54] == 'lmouth1'  # iBUG 49 / 55 corners
    assert names[91:112] == [f'lhan{i}' for i in range(1, 22)]
    assert names[112:133] == [f'rhan{i}' for i in range(1, 22)]
    # parts: contiguous, in annotation order, covering all 133
    parts = wb['parts']
    assert [p['field'] for p in parts] == [
        'keypoints', 'foot_kpts', 'face_kpts', 'lefthand_kpts', 'righthand_kpts']
    assert [p['count'] for p in parts] == [17, 6, 68, 21, 21]
    assert [p['start'] for p in parts] == [0, 17, 23, 91, 112]


@pytest.mark.parametrize('name', DATASETS)
def test_mirror_pairs_are_an_involution_matching_the_names(name):
    spec = specs.load_spec(name)
    names = spec['joint_names']
    mirror = joint_table.spec_mirror_indices(spec)
    assert mirror.dtype == np.int32
    np.testing.assert_array_equal(mirror[mirror], np.arange(len(names)))
    for i, n in enumerate(names):
        partner = joint_table.mirror_partner_name(n)
        if partner in names:
            assert names[mirror[i]] == partner
        else:
            assert mirror[i] == i
    for left, right in spec['mirror_pairs']:
        assert left.startswith('l') and right == 'r' + left[1:]


def test_mirror_pairs_by_index_as_in_the_dataset_spec():
    coco = joint_table.spec_mirror_indices('coco')
    np.testing.assert_array_equal(coco, [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15])
    mads = joint_table.spec_mirror_indices('mads')
    expected = np.arange(19)
    for a, b in [(2, 6), (3, 7), (4, 8), (5, 9), (10, 14), (11, 15), (12, 16), (13, 17)]:
        expected[a], expected[b] = b, a
    np.testing.assert_array_equal(mads, expected)
    wb = specs.load_spec('coco_wholebody')['joint_names']
    wb_mirror = joint_table.spec_mirror_indices('coco_wholebody')
    assert wb[wb_mirror[wb.index('rface1')]] == 'lface1'
    assert wb[wb_mirror[wb.index('chin')]] == 'chin'
    assert wb_mirror[91 + 5] == 112 + 5  # lhan6 <-> rhan6
    assert len(specs.load_spec('coco_wholebody')['mirror_pairs']) == 8 + 3 + 29 + 21


def test_mads_15_joint_slots():
    spec = specs.load_spec('mads')
    assert spec['joint_names'] == ['neck', 'pelv', 'lhip', 'lkne', 'lank', 'ltoe', 'rhip', 'rkne',
                                   'rank', 'rtoe', 'lsho', 'lelb', 'lwri', 'lhan', 'rsho', 'relb',
                                   'rwri', 'rhan', 'head']
    assert spec['slots_15'] == [0, 1, 2, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15, 16, 18]
    assert [spec['joint_names'][i] for i in spec['slots_15']] == spec['joint_names_15']
    missing = set(spec['joint_names']) - set(spec['joint_names_15'])
    assert missing == {'ltoe', 'rtoe', 'lhan', 'rhan'}


def test_thresholds_and_weights():
    coco = specs.load_spec('coco')['thresholds']
    assert (coco['min_visible'], coco['min_labelled'], coco['min_box_side'],
            coco['box_enlarge'], coco['max_iou']) == (6, 9, 200, 1.25, 0.1)
    assert specs.load_spec('coco_wholebody')['thresholds']['min_limb_joints'] == 7
    dense = specs.load_spec('densepose_coco')['thresholds']
    assert (dense['min_visible'], dense['min_labelled'], dense['min_limb_joints'],
            dense['dp_coord_divisor']) == (6, 9, 7, 255)
    assert len(specs.load_spec('densepose_coco')['limb_joints']) == 12
    mads = specs.load_spec('mads')['thresholds']
    assert (mads['sampler_threshold_mm'], mads['box_enlarge']) == (100, 1.2)
    assert specs.load_spec('agora')['thresholds']['occlusion_max'] == 75
    behave = specs.load_spec('behave')['thresholds']
    assert (behave['sampler_threshold_mm'], behave['box_enlarge']) == (100, 1.05)
    flags = {n: (specs.load_spec(n)['single_person'], specs.load_spec(n)['realistic_background'])
             for n in DATASETS}
    assert flags == {'coco': (False, False), 'coco_wholebody': (False, False),
                     'densepose_coco': (False, False), 'mads': (True, False),
                     'agora': (False, True), 'behave': (True, False)}
    weights = {n: specs.load_spec(n)['weight'] for n in DATASETS}
    assert weights == {'coco': 4, 'coco_wholebody': 4, 'densepose_coco': 14, 'mads': 2,
                       'agora': 10, 'behave': 5}


@pytest.mark.parametrize('name', TABLE_DATASETS)
def test_canonical_positions_are_exactly_symmetric(name):
    spec = specs.load_spec(name)
    pos = spec['canonical_positions']
    assert set(pos) == set(spec['joint_names'])
    for n, p in pos.items():
        assert len(p) == 3 and all(math.isfinite(c) for c in p)
        partner = 'r' + n[1:] if n.startswith('l') else 'l' + n[1:] if n.startswith('r') else None
        if partner in pos:
            assert np.float32(pos[partner][0]) == -np.float32(p[0])
            assert pos[partner][1:] == p[1:]
            assert (p[0] > 0) == n.startswith('l')  # left joints on the person's left (x > 0)
        else:
            assert p[0] == 0, n


# ------------------------------------------------------------------------------------------
# Independent derivation of the canonical positions from data_specs/README.md
# ------------------------------------------------------------------------------------------

def _readme_positions():
    """Left/centre positions built from the README rules; rights added by x negation."""
    wrist = (0.71, -0.48, 0.0)
    eye_y = round(0.96 - 0.936 * 1.70, 2)
    assert eye_y == -0.63
    left = {'lhip': (0.10, 0.06, 0), 'lkne': (0.10, 0.50, 0), 'lank': (0.10, 0.92, 0),
            'lsho': (0.19, -0.48, 0), 'lelb': (0.46, -0.48, 0), 'lwri': wrist}
    face_right = {'rear': (-0.075, 0.010, 0), 'reye': (-0.031, 0, 0.090), 'nose': (0, 0.045, 0.12)}
    for k in range(9):
        t = k * math.pi / 16
        name = 'chin' if k == 8 else f'rface{k + 1}'
        face_right[name] = (0.0 if k == 8 else -0.070 * math.cos(t),
                            0.010 + 0.105 * math.sin(t), 0.020 + 0.080 * math.sin(t))
    brows = zip([-0.062, -0.050, -0.037, -0.024, -0.012], [-0.015, -0.024, -0.028, -0.026, -0.022],
                [0.065, 0.080, 0.090, 0.097, 0.100])
    for i, p in enumerate(brows):
        face_right[f'rface{9 + i}'] = p
    for i, (y, z) in enumerate(zip([0, 0.015, 0.030, 0.045], [0.095, 0.105, 0.115, 0.120])):
        face_right[f'nose{i + 1}'] = (0, y, z)
    face_right.update({'rface14': (-0.017, 0.055, 0.098), 'rface15': (-0.009, 0.058, 0.105),
                       'nose5': (0, 0.060, 0.108)})
    eyes = [(-0.046, 0, 0.080), (-0.036, -0.004, 0.088), (-0.026, -0.004, 0.090),
            (-0.016, 0, 0.088), (-0.026, 0.003, 0.090), (-0.036, 0.003, 0.088)]
    for i, p in enumerate(eyes):
        face_right[f'reye{i + 1}'] = p
    face_right.update({
        'rmouth1': (-0.025, 0.078, 0.088), 'rmouth2': (-0.016, 0.071, 0.098),
        'rmouth3': (-0.006, 0.068, 0.104), 'mouth1': (0, 0.069, 0.105),
        'rmouth4': (-0.016, 0.086, 0.097), 'rmouth5': (-0.007, 0.089, 0.101),
        'mouth2': (0, 0.090, 0.102), 'rmouth6': (-0.020, 0.078, 0.093),
        'rmouth7': (-0.008, 0.076, 0.100), 'mouth3': (0, 0.076, 0.101),
        'rmouth8': (-0.008, 0.080, 0.099), 'mouth4': (0, 0.080, 0.100)})
    wb = dict(left)
    for n, (x, y, z) in face_right.items():
        wb['l' + n[1:] if n.startswith('r') else n] = (-x if x else 0.0, eye_y + y, z)
    wb.update({'ltoe': (0.08, 0.95, 0.21), 'ltoe2': (0.14, 0.95, 0.17), 'lhee': (0.10, 0.95, -0.05)})
    wb['lhan1'] = wrist
    thumb = zip([0.025, 0.055, 0.085, 0.110], [0.020, 0.040, 0.052, 0.060])
    for i, (dx, dz) in enumerate(thumb):
        wb[f'lhan{2 + i}'] = (wrist[0] + dx, wrist[1] + 0.010, dz)
    fingers = [(0.025, [0.092, 0.132, 0.156, 0.178]), (0.005, [0.095, 0.140, 0.167, 0.190]),
               (-0.013, [0.088, 0.130, 0.156, 0.178]), (-0.030, [0.082, 0.114, 0.133, 0.152])]
    for f, (dz, dxs) in enumerate(fingers):
        for j, dx in enumerate(dxs):
            wb[f'lhan{6 + 4 * f + j}'] = (wrist[0] + dx, wrist[1], dz)
    mads = dict(left)
    mads.update({'pelv': (0, 0, 0), 'neck': (0, -0.52, 0), 'head': (0, -0.74, 0),
                 'ltoe': (0.11, 0.94, 0.13), 'lhan': (wrist[0] + 0.08, wrist[1], 0)})

    def complete(d):
        out = {}
        for n, p in d.items():
            p = [round(c, 4) for c in p]
            out[n] = p
            if n.startswith('l'):
                out['r' + n[1:]] = [-p[0], p[1], p[2]]
        return out

    return complete(wb), complete(mads)


def test_canonical_positions_follow_the_documented_derivation():
    wb, mads = _readme_positions()
    for name, expected in [('coco_wholebody', wb), ('coco', wb), ('densepose_coco', wb),
                           ('mads', mads)]:
        spec = specs.load_spec(name)
        actual = spec['canonical_positions']
        assert set(actual) <= set(expected)
        for n in spec['joint_names']:
            np.testing.assert_allclose(actual[n], expected[n], atol=1e-9, err_msg=f'{name}:{n}')


def test_canonical_positions_agree_with_the_demo_skeleton():
    demo = specs.load_spec('demo')['canonical_positions']
    coco = specs.load_spec('coco')['canonical_positions']
    mads = specs.load_spec('mads')['canonical_positions']
    for n in ['lhip', 'rhip', 'lkne', 'rkne', 'lank', 'rank', 'lsho', 'rsho', 'lelb', 'relb',
              'lwri', 'rwri']:
        assert coco[n] == demo[n] and mads[n] == demo[n], n
    for n in ['pelv', 'neck', 'head']:
        assert mads[n] == demo[n]


def test_canonical_positions_are_anatomically_ordered():
    p = {n: np.array(v) for n, v in specs.load_spec('coco_wholebody')['canonical_positions'].items()}
    head_top, floor = -0.74, 0.96
    # y down: eyes above the nose tip above the mouth above the chin above the shoulders
    assert head_top < p['leye'][1] < p['nose'][1] < p['mouth1'][1] < p['chin'][1] < p['lsho'][1]
    assert all(p[n][2] > 0 for n in p if 'mouth' in n or n.startswith(('nose', 'chin')))
    # the face lies between the ears; the feet on the floor, toes in front of the heel
    assert all(abs(p[n][0]) < p['lear'][0] for n in p if 'face' in n or 'eye' in n)
    assert all(0.9 < p[n][1] <= floor for n in ['ltoe', 'ltoe2', 'lhee'])
    assert p['ltoe'][2] > p['ltoe2'][2] > 0 > p['lhee'][2]
    # fingertips beyond their knuckles, all beyond the wrist; middle finger the longest
    for base in (6, 10, 14, 18):
        xs = [p[f'lhan{base + j}'][0] for j in range(4)]
        assert p['lwri'][0] < xs[0] < xs[1] < xs[2] < xs[3]
    assert p['lhan13'][0] == max(p[f'lhan{i}'][0] for i in range(1, 22))
    np.testing.assert_allclose(p['lhan13'][0] - p['lwri'][0], 0.108 * 1.70 + 0.006, atol=2e-3)
