"""nlf_tf.joint_table: the global joint table built from the data specs."""

import copy

import numpy as np
import pytest

from nlf_tf import demo_data, joint_table, specs
from nlf_tf.model import canonical


def _spec(name):
    return copy.deepcopy(specs.load_spec(name))


def test_table_joint_names_append_the_suffix():
    assert joint_table.table_joint_names('coco')[:3] == ['nose_coco', 'leye_coco', 'reye_coco']
    assert joint_table.table_joint_names('mads')[1] == 'pelv_mads'
    assert joint_table.table_joint_names('agora') == []  # body-model joints are not table rows
    assert joint_table.table_joint_names('demo')[:2] == ['pelv', 'lhip']  # no suffix


def test_coco_and_mads_table():
    names, positions = joint_table.build_joint_table(['coco', 'mads'])
    assert len(names) == 17 + 19 == len(set(names))
    assert positions.dtype == np.float32 and positions.shape == (36, 3)
    assert names[:17] == [n + '_coco' for n in specs.load_spec('coco')['joint_names']]
    assert names[17:] == [n + '_mads' for n in specs.load_spec('mads')['joint_names']]
    coco_pos = specs.load_spec('coco')['canonical_positions']
    mads_pos = specs.load_spec('mads')['canonical_positions']
    np.testing.assert_array_equal(positions[names.index('lwri_coco')],
                                  np.float32(coco_pos['lwri']))
    np.testing.assert_array_equal(positions[names.index('ltoe_mads')],
                                  np.float32(mads_pos['ltoe']))
    np.testing.assert_array_equal(positions[names.index('pelv_mads')], [0, 0, 0])


def test_all_keypoint_datasets_share_the_coco_rows():
    names, positions = joint_table.build_joint_table(
        ['coco_wholebody', 'coco', 'densepose_coco', 'mads', 'agora', 'behave'])
    assert len(names) == 133 + 19 == len(set(names))
    wb_names = [n + '_coco' for n in specs.load_spec('coco_wholebody')['joint_names']]
    assert names[:133] == wb_names
    # other order: the 17 body rows come first, then the rest of WholeBody
    names2, positions2 = joint_table.build_joint_table(['coco', 'coco_wholebody'])
    assert len(names2) == 133 and names2[:17] == wb_names[:17]
    assert sorted(names2) == sorted(wb_names)
    for i, n in enumerate(names2):
        np.testing.assert_array_equal(positions2[i], positions[names.index(n)])
    assert joint_table.build_joint_table(['agora', 'behave'])[0] == []


def test_table_is_exactly_mirror_symmetric_and_fits_the_canonical_layer():
    names, positions = joint_table.build_joint_table(['coco_wholebody', 'mads'])
    perm = joint_table.mirror_permutation(names)
    np.testing.assert_array_equal(positions[perm], positions * np.float32([-1, 1, 1]))
    # the model's left/right/centre split is the same pairing
    i_left, i_right, i_center = canonical.split_joints(names)
    np.testing.assert_array_equal(perm[i_left], i_right)
    np.testing.assert_array_equal(perm[i_center], i_center)
    assert len(i_left) == 8 + 3 + 29 + 21 + 8 and len(i_center) == 1 + 1 + 9 + 3
    # 42 frozen hand rows (lhan1..21, rhan1..21); MADS hand joints stay trainable
    frozen = [n for n in names if canonical.is_hand_joint(n)]
    assert len(frozen) == 42 and 'lhan_mads' not in frozen


def test_mirror_permutation_by_hand():
    names = ['pelv', 'lhip', 'rhip', 'lowerback', 'rear_x', 'lear_x', 'rtoe']
    np.testing.assert_array_equal(joint_table.mirror_permutation(names), [0, 2, 1, 3, 5, 4, 6])
    with pytest.raises(ValueError, match='duplicates'):
        joint_table.mirror_permutation(['a', 'a'])


def test_joint_rows():
    names, _ = joint_table.build_joint_table(['coco_wholebody', 'mads'])
    np.testing.assert_array_equal(joint_table.joint_rows(names, 'coco'), np.arange(17))
    np.testing.assert_array_equal(joint_table.joint_rows(names, 'densepose_coco'), np.arange(17))
    rows = joint_table.joint_rows(names, 'mads')
    assert rows.dtype == np.int32
    np.testing.assert_array_equal(rows, np.arange(133, 152))
    assert joint_table.joint_rows(names, 'agora').shape == (0,)
    coco_only, _ = joint_table.build_joint_table(['coco'])
    with pytest.raises(ValueError, match="'mads'.*pelv_mads"):
        joint_table.joint_rows(coco_only, 'mads')


def test_demo_spec_works():
    names, positions = joint_table.build_joint_table(['demo'])
    demo_names, demo_positions = demo_data.demo_joint_table()
    assert names == demo_names
    np.testing.assert_array_equal(positions, demo_positions)


def test_unknown_joint_in_mirror_pairs_names_spec_and_field():
    spec = _spec('mads')
    spec['mirror_pairs'].append(['lfoo', 'rfoo'])
    with pytest.raises(ValueError, match=r"data spec 'mads'.*mirror_pairs.*'lfoo'"):
        joint_table.build_joint_table([spec])
    with pytest.raises(ValueError, match=r"data spec 'mads'.*mirror_pairs.*'lfoo'"):
        joint_table.validate_spec(spec)


def test_mirror_pair_errors():
    spec = _spec('coco')
    spec['mirror_pairs'] = spec['mirror_pairs'][1:]  # leye/reye missing
    with pytest.raises(ValueError, match=r"'coco'.*mirror_pairs.*leye"):
        joint_table.build_joint_table([spec])
    spec = _spec('coco')
    spec['mirror_pairs'][0] = ['leye', 'rear']
    with pytest.raises(ValueError, match=r"'coco'.*mirror_pairs\"\[0\]"):
        joint_table.spec_mirror_indices(spec)


def test_missing_position_names_spec_and_joint():
    spec = _spec('mads')
    del spec['canonical_positions']['head']
    with pytest.raises(ValueError, match=r"'mads'.*canonical_positions.*'head'"):
        joint_table.build_joint_table(['coco', spec])
    spec = _spec('mads')
    spec['canonical_positions']['neck'] = [0, float('nan'), 0]
    with pytest.raises(ValueError, match=r"'mads'.*canonical_positions.*'neck'"):
        joint_table.build_joint_table([spec])


def test_conflicting_positions_name_both_specs():
    dense = _spec('densepose_coco')
    dense['canonical_positions']['nose'] = [0.0, -0.6, 0.12]
    with pytest.raises(ValueError, match=r"nose_coco.*'coco'.*'densepose_coco'"):
        joint_table.build_joint_table(['coco', dense])


def test_asymmetry_and_off_centre_joints_are_rejected():
    spec = _spec('mads')
    spec['canonical_positions']['rwri'] = [-0.70, -0.48, 0.0]
    with pytest.raises(ValueError, match=r"'mads'.*rwri_mads.*lwri_mads"):
        joint_table.build_joint_table([spec])
    spec = _spec('mads')
    spec['canonical_positions']['neck'] = [0.01, -0.52, 0.0]
    with pytest.raises(ValueError, match=r"'mads'.*neck_mads.*x = 0"):
        joint_table.build_joint_table([spec])


def test_validate_spec_field_errors():
    spec = _spec('coco')
    del spec['weight']
    with pytest.raises(ValueError, match=r"'coco'.*weight"):
        joint_table.validate_spec(spec)
    spec = _spec('coco')
    spec['thresholds']['min_visible'] = 'six'
    with pytest.raises(ValueError, match=r'thresholds.min_visible'):
        joint_table.validate_spec(spec)
    spec = _spec('mads')
    spec['root_joint'] = 'pelvis'
    with pytest.raises(ValueError, match=r'root_joint'):
        joint_table.validate_spec(spec)
    spec = _spec('mads')
    spec['category'] = '3d'
    with pytest.raises(ValueError, match=r'category'):
        joint_table.validate_spec(spec)
