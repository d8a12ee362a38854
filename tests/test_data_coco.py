import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf.data import coco, rle
from nlf_tf.data.example import DatasetError, Example, Skip
from nlf_tf.data.polygon import polygon_to_mask, polygons_to_mask

H, W = 480, 640


def write_jpeg(path, height=H, width=W):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_jpeg(tf.zeros([height, width, 3], tf.uint8)))


def body_keypoints(x0, y0, w, h, visibility=None):
    """17 keypoints whose bounding box is exactly [x0, y0, w, h] (alternating left/right
    x edge, y spread evenly), as a COCO flat list with the given visibility flags."""
    visibility = [2] * 17 if visibility is None else visibility
    flat = []
    for i, v in enumerate(visibility):
        if v == 0:
            flat += [0, 0, 0]
        else:
            flat += [x0 + w * (i % 2), y0 + h * i / 16, v]
    return flat


def annotation(ann_id, image_id, keypoints, bbox=(10, 10, 300, 400), segmentation=None, **extra):
    ann = dict(id=ann_id, image_id=image_id, category_id=1, iscrowd=0, bbox=list(bbox),
               area=1.0, num_keypoints=17, keypoints=keypoints,
               segmentation=[] if segmentation is None else segmentation)
    ann.update(extra)
    return ann


def write_coco(root, annotations, images=None, split='train', year=2014, name=None,
               write_images=True):
    images = images or [dict(id=1, file_name='a.jpg', width=W, height=H)]
    if write_images:
        for image in images:
            write_jpeg(os.path.join(root, f'{split}{year}', image['file_name']),
                       image['height'], image['width'])
    name = name or f'person_keypoints_{split}{year}.json'
    path = os.path.join(root, 'annotations', name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=[dict(id=1)]), f)
    return path


def run(root, **kwargs):
    records = list(coco.iter_examples(str(root), **kwargs))
    examples = [r for r in records if isinstance(r, Example)]
    skips = [r for r in records if isinstance(r, Skip)]
    assert len(examples) + len(skips) == len(records)
    return examples, skips


def test_unlabelled_point_becomes_nan_and_example_fields(tmp_path):
    vis = [2] * 10 + [1, 1] + [0] * 5
    kps = body_keypoints(100, 50, 200, 300, vis)
    poly = [[100.5, 60.5, 250.5, 60.5, 250.5, 300.5, 100.5, 300.5]]
    write_coco(tmp_path, [annotation(7, 1, kps, bbox=(90, 40, 220, 320), segmentation=poly)])
    examples, skips = run(tmp_path)
    assert skips == []
    (ex,) = examples
    ex.validate()
    assert ex.dataset == 'coco' and ex.category == 'kp2d'
    assert ex.example_id == 'train2014/a.jpg#0'
    assert ex.image_path == os.path.join(str(tmp_path), 'train2014', 'a.jpg')
    assert ex.image is None and ex.joints3d is None
    expected = np.array(kps, np.float32).reshape(17, 3)[:, :2]
    expected[12:] = np.nan
    np.testing.assert_array_equal(ex.joints2d, expected)
    assert np.isnan(ex.joints2d[12:]).all() and np.isfinite(ex.joints2d[:12]).all()
    np.testing.assert_array_equal(ex.box, [90, 40, 220, 320])
    # camera: 8 degree field of view across the long side, centred principal point
    f = W / (2 * math.tan(math.radians(4)))
    np.testing.assert_allclose(ex.camera.intrinsic_matrix,
                               [[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]], rtol=1e-6)
    # mask: pixel centres (integers) inside the rectangle: x 101..250, y 61..300
    mask = rle.decode(ex.mask_rle)
    assert ex.mask_rle['size'] == [H, W] and isinstance(ex.mask_rle['counts'], str)
    expected_mask = np.zeros((H, W), np.uint8)
    expected_mask[61:301, 101:251] = 1
    np.testing.assert_array_equal(mask, expected_mask)


def test_count_and_size_filters_give_reasons(tmp_path):
    good = body_keypoints(100, 50, 200, 300)
    few_visible = body_keypoints(100, 50, 200, 300, [2] * 5 + [1] * 5 + [0] * 7)   # 5 v=2
    few_labelled = body_keypoints(100, 50, 200, 300, [2] * 6 + [1] * 2 + [0] * 9)  # 8 v>=1
    just_enough = body_keypoints(100, 50, 200, 300, [2] * 6 + [1] * 3 + [0] * 8)   # 6 and 9
    # keypoint box 100 x 159.9 -> enlarged long side 199.9 < 200; 160 -> exactly 200 (kept)
    too_small = body_keypoints(500, 10, 100, 159.9)
    just_big = body_keypoints(500, 10, 100, 160)
    images = [dict(id=i, file_name=f'{i:03d}.jpg', width=W, height=H) for i in range(1, 7)]
    anns = [annotation(10 + i, i, kps) for i, kps in enumerate(
        [good, few_visible, few_labelled, just_enough, too_small, just_big], start=1)]
    write_coco(tmp_path, anns, images)
    examples, skips = run(tmp_path)
    assert [e.example_id for e in examples] == [
        'train2014/001.jpg#0', 'train2014/004.jpg#0', 'train2014/006.jpg#0']
    reasons = {s.example_id: s.reason for s in skips}
    assert reasons == {
        'train2014/002.jpg@ann12': 'too few visible keypoints',
        'train2014/003.jpg@ann13': 'too few labelled keypoints',
        'train2014/005.jpg#0': 'keypoint box too small',
    }
    assert {s.field for s in skips} == {'annotations[1].keypoints', 'annotations[2].keypoints',
                                        'annotations[4].keypoints'}


def test_overlap_rule_single_person(tmp_path):
    # enlarged keypoint boxes are 200 x 300; shifted by dx they overlap (200 - dx) * 300:
    # dx = 170 -> IoU = 9000 / 111000 = 0.081 (kept), dx = 150 -> 15000 / 105000 = 0.143
    a = body_keypoints(100, 100, 160, 240)
    assert coco.box_iou(coco.expand_box([100, 100, 160, 240], 1.25),
                        coco.expand_box([270, 100, 160, 240], 1.25)) == pytest.approx(9000 / 111000)
    images = [dict(id=1, file_name='far.jpg', width=W, height=H),
              dict(id=2, file_name='near.jpg', width=W, height=H)]
    anns = [annotation(1, 1, a), annotation(2, 1, body_keypoints(270, 100, 160, 240)),
            annotation(3, 2, a), annotation(4, 2, body_keypoints(250, 100, 160, 240))]
    write_coco(tmp_path, anns, images)
    examples, skips = run(tmp_path)
    assert [e.example_id for e in examples] == ['train2014/far.jpg#0', 'train2014/far.jpg#1']
    assert [(s.example_id, s.reason) for s in skips] == [
        ('train2014/near.jpg#0', 'overlaps another person'),
        ('train2014/near.jpg#1', 'overlaps another person')]
    examples, skips = run(tmp_path, single_person=False)
    assert len(examples) == 4 and skips == []


def test_overlap_counts_small_candidates_but_not_failed_counts(tmp_path):
    # like PosePile, the other boxes are those of all persons passing the keypoint counts, even
    # if they are too small themselves; a person failing the counts does not count
    big = body_keypoints(100, 100, 160, 240)
    small_inside = body_keypoints(130, 150, 100, 100)  # passes counts, too small, IoU 0.26
    failed = body_keypoints(120, 120, 150, 230, [2] * 5 + [0] * 12)  # fails counts
    write_coco(tmp_path, [annotation(1, 1, big), annotation(2, 1, small_inside)])
    examples, skips = run(tmp_path)
    assert examples == [] and sorted(s.reason for s in skips) == [
        'keypoint box too small', 'overlaps another person']
    write_coco(tmp_path, [annotation(1, 1, big), annotation(2, 1, failed)])
    examples, skips = run(tmp_path)
    assert len(examples) == 1 and [s.reason for s in skips] == ['too few visible keypoints']


def test_bad_values_are_skipped(tmp_path):
    nan_kps = body_keypoints(100, 50, 200, 300)
    nan_kps[3] = float('nan')
    negative = body_keypoints(100, 50, 200, 300)
    negative[4] = -5
    images = [dict(id=i, file_name=f'{i}.jpg', width=W, height=H) for i in range(1, 6)]
    anns = [annotation(1, 1, nan_kps), annotation(2, 2, negative),
            annotation(3, 3, body_keypoints(100, 50, 200, 300), bbox=(5, 5, 0, 100)),
            annotation(4, 4, body_keypoints(100, 50, 200, 300), bbox=(5, 5, float('nan'), 1)),
            annotation(5, 5, body_keypoints(100, 50, 200, 300))]
    write_coco(tmp_path, anns, images)
    os.remove(os.path.join(tmp_path, 'train2014', '5.jpg'))
    examples, skips = run(tmp_path)
    assert examples == []
    got = [(s.reason, s.field) for s in skips]
    assert got == [('invalid keypoint coordinates', 'annotations[0].keypoints'),
                   ('invalid keypoint coordinates', 'annotations[1].keypoints'),
                   ('zero-area box', 'annotations[2].bbox'),
                   ('invalid box', 'annotations[3].bbox'),
                   ('missing image', 'file_name')]
    assert skips[-1].file == os.path.join(str(tmp_path), 'train2014', '5.jpg')


def test_rle_segmentations(tmp_path):
    mask = np.zeros((H, W), np.uint8)
    mask[100:200, 50:120] = 1
    mask[300, 3] = 1
    uncompressed = {'size': [H, W], 'counts': rle.mask_to_counts(mask)}
    compressed = rle.encode(mask)
    images = [dict(id=1, file_name='a.jpg', width=W, height=H),
              dict(id=2, file_name='b.jpg', width=W, height=H),
              dict(id=3, file_name='c.jpg', width=W, height=H)]
    kps = body_keypoints(100, 50, 200, 300)
    anns = [annotation(1, 1, kps, segmentation=uncompressed),
            annotation(2, 2, kps, segmentation=compressed),
            annotation(3, 3, kps, segmentation={'size': [H, W + 1], 'counts': 'abc'})]
    write_coco(tmp_path, anns, images)
    examples, skips = run(tmp_path)
    assert [s.reason for s in skips] == ['invalid segmentation']
    for ex in examples:
        assert ex.mask_rle == compressed
    examples, skips = run(tmp_path, with_masks=False)
    assert len(examples) == 3 and all(ex.mask_rle is None for ex in examples)


def test_year_2017_paths(tmp_path):
    write_coco(tmp_path, [annotation(1, 1, body_keypoints(100, 50, 200, 300))],
               split='val', year=2017)
    examples, _ = run(tmp_path, split='val', year=2017)
    assert [e.example_id for e in examples] == ['val2017/a.jpg#0']


def wholebody_annotation(ann_id, image_id, body, **parts):
    extra = {}
    for part, n in (('foot', 6), ('face', 68), ('lefthand', 21), ('righthand', 21)):
        points, valid = parts.get(part, (None, False))
        if points is None:
            points = [[0, 0, 0]] * n
        extra[f'{part}_kpts'] = [float(v) for p in points for v in p]
        extra[f'{part}_valid'] = valid
    return annotation(ann_id, image_id, body, **extra)


def test_wholebody_part_validity_and_order(tmp_path):
    rng = np.random.default_rng(0)

    def part(n, scores):
        xy = rng.uniform(120, 280, size=(n, 2)).round(1)
        return np.concatenate([xy, np.array(scores, float)[:, None]], axis=1)

    foot = part(6, [1, 0, 0.5, 1, 1, -1])          # valid part, scores <= 0 dropped
    face = part(68, [1] * 68)                      # part not valid -> all NaN
    lhand = part(21, [0.3] * 10 + [0] * 11)
    rhand = part(21, [1] * 21)
    rhand[4, 0] = -3                               # a negative point is dropped pointwise
    body = body_keypoints(100, 50, 200, 300)
    write_coco(tmp_path, [wholebody_annotation(
        1, 1, body, foot=(foot, True), face=(face, False), lefthand=(lhand, True),
        righthand=(rhand, True))], year=2017, name='coco_wholebody_train_v1.0.json')
    examples, skips = run(tmp_path, variant='wholebody')
    assert skips == []
    (ex,) = examples
    ex.validate()
    assert ex.dataset == 'coco_wholebody' and ex.example_id == 'train2017/a.jpg#0'
    assert ex.joints2d.shape == (133, 2)
    expected = np.full((133, 2), np.nan, np.float32)
    expected[:17] = np.array(body, np.float32).reshape(17, 3)[:, :2]
    for start, points, keep in ((17, foot, [1, 0, 1, 1, 1, 0]),
                                (91, lhand, [1] * 10 + [0] * 11),
                                (112, rhand, [1, 1, 1, 1, 0] + [1] * 16)):
        for i, k in enumerate(keep):
            if k:
                expected[start + i] = points[i, :2]
    np.testing.assert_array_equal(ex.joints2d, expected)
    assert coco.specs.load_spec('coco_wholebody')['joint_names'][91] == 'lhan1'
    for name in ('coco', 'coco_wholebody'):
        assert tuple(coco.specs.load_spec(name)['limb_joints']) == coco.LIMB_JOINTS


def test_wholebody_limb_rule_and_no_overlap_filter(tmp_path):
    # 5 face points + 4 limb joints labelled: passes the body counts (6 visible, 9 labelled)
    # but has only 4 of the 12 limb joints -> dropped by NLF's merge rule (needs > 6)
    vis = [2] * 6 + [0] * 8 + [1] * 3
    sparse = body_keypoints(100, 50, 200, 300, vis)
    a = body_keypoints(100, 100, 160, 240)
    b = body_keypoints(110, 100, 160, 240)  # heavy overlap with a: both kept in WholeBody
    images = [dict(id=1, file_name='a.jpg', width=W, height=H),
              dict(id=2, file_name='b.jpg', width=W, height=H)]
    write_coco(tmp_path, [wholebody_annotation(1, 1, sparse), wholebody_annotation(2, 2, a),
                          wholebody_annotation(3, 2, b)],
               images, year=2017, name='coco_wholebody_train_v1.0.json')
    examples, skips = run(tmp_path, variant='wholebody')
    assert [e.example_id for e in examples] == ['train2017/b.jpg#0', 'train2017/b.jpg#1']
    assert [(s.example_id, s.reason) for s in skips] == [
        ('train2017/a.jpg#0', 'too few limb joints')]
    examples, skips = run(tmp_path, variant='wholebody', limb_filter=False)
    assert len(examples) == 3 and skips == []
    # the body variant would apply the overlap filter instead
    examples, skips = run(tmp_path, variant='wholebody', single_person=True)
    assert [s.reason for s in skips] == ['too few limb joints'] + ['overlaps another person'] * 2


def test_structural_errors(tmp_path):
    with pytest.raises(DatasetError, match='annotation file not found'):
        run(tmp_path)
    path = write_coco(tmp_path, [])
    with open(path, 'w') as f:
        f.write('{"images": [')
    with pytest.raises(DatasetError, match='malformed JSON') as e:
        run(tmp_path)
    assert e.value.file == path
    write_coco(tmp_path, [dict(id=1, image_id=1, bbox=[0, 0, 1, 1])])
    with pytest.raises(DatasetError) as e:
        run(tmp_path)
    assert e.value.field == 'annotations[0].keypoints'
    write_coco(tmp_path, [annotation(1, 1, [1, 2, 2] * 16)])
    with pytest.raises(DatasetError, match='17x3') as e:
        run(tmp_path)
    write_coco(tmp_path, [annotation(1, 99, body_keypoints(100, 50, 200, 300))])
    with pytest.raises(DatasetError) as e:
        run(tmp_path)
    assert e.value.field == 'annotations[0].image_id'
    write_coco(tmp_path, [], images=[dict(id=1, file_name='a.jpg', width=W)],
               write_images=False)
    with pytest.raises(DatasetError) as e:
        run(tmp_path)
    assert e.value.field == 'images[0].height'
    write_coco(tmp_path, [annotation(1, 1, body_keypoints(100, 50, 200, 300, [3] * 17))])
    with pytest.raises(DatasetError, match='visibility'):
        run(tmp_path)
    ann = wholebody_annotation(1, 1, body_keypoints(100, 50, 200, 300))
    del ann['face_valid']
    write_coco(tmp_path, [ann], year=2017, name='coco_wholebody_train_v1.0.json')
    with pytest.raises(DatasetError) as e:
        run(tmp_path, variant='wholebody')
    assert e.value.field == 'annotations[0].face_valid'
    with pytest.raises(ValueError, match='2017'):
        run(tmp_path, variant='wholebody', year=2014)
    with pytest.raises(ValueError, match='variant'):
        run(tmp_path, variant='hands')


def point_in_polygon(x, y, poly):
    """Plain even-odd ray casting, one point at a time (independent of the rasteriser)."""
    inside = False
    n = len(poly)
    for i in range(n):
        (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % n]
        if (y0 <= y) != (y1 <= y):
            if x0 + (y - y0) * (x1 - x0) / (y1 - y0) <= x:
                inside = not inside
    return inside


def test_polygon_rasterisation_matches_ray_casting():
    shape = (23, 31)
    concave = [(2.3, 1.7), (28.6, 4.2), (15.2, 11.1), (27.9, 20.6), (3.1, 18.4), (-4.0, 9.5)]
    triangle = [(20.5, 0.5), (35.5, 10.5), (18.3, 21.9)]
    for poly in (concave, triangle):
        got = polygon_to_mask(np.array(poly).reshape(-1), shape)
        want = np.array([[point_in_polygon(x, y, poly) for x in range(shape[1])]
                         for y in range(shape[0])])
        np.testing.assert_array_equal(got, want)
        assert 20 < got.sum() < got.size
    union = polygons_to_mask([np.ravel(concave), np.ravel(triangle)], shape)
    np.testing.assert_array_equal(
        union, polygon_to_mask(np.ravel(concave), shape) | polygon_to_mask(np.ravel(triangle),
                                                                           shape))
    with pytest.raises(ValueError, match='even'):
        polygon_to_mask([1, 2, 3], shape)
