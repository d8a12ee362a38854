"""Tiny synthetic COCO, COCO-WholeBody, DensePose-COCO, MADS, AGORA and BEHAVE folders in their
native layouts.

The people are the procedural demo people (`nlf_tf.demo_data`: random poses of the demo skeleton,
rendered as coloured capsules), so a model can learn from the files, and the files are written
exactly as the real datasets ship them, so the real readers (`nlf_tf.data.readers`) and
`nlf-tf-prepare` run on them unchanged:

    <out_root>/coco/annotations/person_keypoints_train2014.json, train2014/COCO_train2014_*.jpg
    <out_root>/coco_wholebody/annotations/coco_wholebody_train_v1.0.json, train2017/*.jpg
    <out_root>/densepose_coco/DensePose_COCO/densepose_coco_2014_train.json,
        UV_data/UV_Processed.mat, train2014/COCO_train2014_*.jpg
    <out_root>/mads/multi_view_data/Jazz/Jazz_S1_C{0,1,2}.avi (Motion JPEG), Jazz_S1_GT.mat,
        Calib_Cam{0,1,2}.mat
    <out_root>/body_models/smpl_synthetic.npz   (SMPL file layout, 24-joint tree, coarse mesh)
    <out_root>/body_models/{smpl,smplh,smplx}/...  (humanoid SMPL/SMPL+H/SMPL-X files in the
        official layouts, `nlf_tf.body_models.synthetic`), body_models/canonical_assets/ (made
        on first training use)
    <out_root>/agora/...   (`nlf_tf.data.synthetic_agora`: DataFrame pickles, SMPL-X fits in scan
        frames, label-colour masks, 384 x 216 PNG renders)
    <out_root>/behave/...  (`nlf_tf.data.synthetic_behave`: split.json, Kinect calibrations with
        8-coefficient distortion, SMPL+H fits, 256 x 192 frames and person masks)
    <out_root>/synthetic.json                   (settings; written last, marks completion)

Keypoints the demo skeleton lacks (COCO eyes/ears/nose, WholeBody face/hands/feet, MADS toes and
hands) are placed by one rule: a landmark with canonical position q (from the dataset's data spec,
the shared canonical frame) is attached to the demo bone nearest to q; with t the projection of q
on that bone (clipped to [0, 1]) and o = q - (bone point at t), its posed position is the bone
point at t plus o carried rigidly by the bone (`demo_data.bone_point_positions`). Landmarks that
coincide with demo joints (shoulders, hips, ...) get o = 0 and are exactly those joints. So eyes,
ears and the face ride on the neck->head bone, toes and heels on the shin, hand points beyond the
wrist on the forearm.

COCO visibility: 0 (unlabelled, x = y = 0) outside the image, 1 (occluded) if the capsule surface
rendered at its pixel is well in front of it or its offset faces away from the camera, else 2.

The body model (`smpl_synthetic.npz`): every demo bone is an open tube of RING_SIZE vertices on
each of RING_FRACTIONS along the bone, radius = the capsule radius (480 vertices, 840 triangles),
in SMPL's axes (y up: the canonical frame with y negated). The 24 SMPL joints are affine
combinations of tube-ring vertices (e.g. 'spine1' 40 % up the pelvis->spine bone, 'left_hand'
0.08 m beyond the wrist, 'left_foot' 0.13 m in front of the ankle), each bone's vertices are
skinned rigidly to one SMPL joint, shapedirs hold a height and a girth component, posedirs are 0.
UV_Processed.mat: each tube is cut into a front half (the half facing the canonical +z) and a back
half, each half is one rectangular strip of a DensePose chart (U around the tube, V along the
bone; strips of one chart side by side with gaps). DensePose points are sampled on visible,
camera-facing parts of the rendered tubes and stored as (I, U, V) of that layout, so the
DensePose reader maps them back to the same mesh points, whose canonical positions are where the
points lie on the demo people. The hand and foot charts (3-6) are left empty.

MADS: one person per frame (a new random pose each frame), world y up, three cameras around
the person with Bouguet calibrations (small radial and tangential distortion); frames are
rendered with an undistorted camera on a larger canvas and resampled into the distorted view.

`prepare_synthetic` runs the real readers and `prepare_dataset` on the folders, and
`build_synthetic_data` is the training data of `--data=synthetic` (see `nlf_tf.data_sources`).
"""

import json
import os
import shutil

import numpy as np
import scipy.io
import scipy.spatial

from nlf_tf import demo_data
from nlf_tf import specs

DATASETS = ('coco', 'coco_wholebody', 'densepose_coco', 'mads')
PARAM_DATASETS = ('agora', 'behave')
ALL_DATASETS = DATASETS + PARAM_DATASETS
# Interior points per body-model family for the synthetic models (their bodies are small and
# simple; the default of nlf-tf-canonical is 200k).
SYNTHETIC_NUM_INTERIOR = 20000
DEFAULT_NUM_IMAGES = 48
DEFAULT_IMAGE_SIDE = 320
MADS_FRAME_SHAPE = (240, 320)  # H, W
MADS_CANVAS_PAD = 32  # extra pixels per side of the undistorted render
MADS_ACTION, MADS_SEQUENCE = 'Jazz', 'S1'
MADS_FPS = 15
JPEG_QUALITY = 95
SETTINGS_FILE = 'synthetic.json'
FORMAT_VERSION = 2
MAX_DP_POINTS = 80

RING_FRACTIONS = (0.0, 1 / 3, 2 / 3, 1.0)
RING_SIZE = 8  # vertices per ring; must be a multiple of 4 (front/back halves, forward vertex)

SMPL_JOINT_NAMES = (
    'pelvis', 'left_hip', 'right_hip', 'spine1', 'left_knee', 'right_knee', 'spine2',
    'left_ankle', 'right_ankle', 'spine3', 'left_foot', 'right_foot', 'neck', 'left_collar',
    'right_collar', 'head', 'left_shoulder', 'right_shoulder', 'left_elbow', 'right_elbow',
    'left_wrist', 'right_wrist', 'left_hand', 'right_hand')
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
# SMPL joint -> (demo bone, fraction along it, forward offset in metres). Left side only; the
# right side is the same with 'l' -> 'r'.
_SMPL_JOINT_PLACES = {
    'pelvis': (('pelv', 'spin'), 0.0, 0.0),
    'left_hip': (('lhip', 'lkne'), 0.0, 0.0),
    'spine1': (('pelv', 'spin'), 0.4, 0.0),
    'left_knee': (('lkne', 'lank'), 0.0, 0.0),
    'spine2': (('pelv', 'spin'), 1.0, 0.0),
    'left_ankle': (('lkne', 'lank'), 1.0, 0.0),
    'spine3': (('spin', 'neck'), 0.5, 0.0),
    'left_foot': (('lkne', 'lank'), 1.0, 0.13),
    'neck': (('spin', 'neck'), 1.0, 0.0),
    'left_collar': (('neck', 'lsho'), 0.5, 0.0),
    'head': (('neck', 'head'), 0.6, 0.0),
    'left_shoulder': (('lsho', 'lelb'), 0.0, 0.0),
    'left_elbow': (('lelb', 'lwri'), 0.0, 0.0),
    'left_wrist': (('lelb', 'lwri'), 1.0, 0.0),
    'left_hand': (('lelb', 'lwri'), 1.32, 0.0),
}
# Demo bone -> SMPL joint its vertices are skinned to (left side; right by symmetry).
_BONE_SKIN_JOINT = {
    ('pelv', 'spin'): 'pelvis', ('spin', 'neck'): 'spine2', ('neck', 'head'): 'neck',
    ('pelv', 'lhip'): 'pelvis', ('lhip', 'lkne'): 'left_hip', ('lkne', 'lank'): 'left_knee',
    ('neck', 'lsho'): 'left_collar', ('lsho', 'lelb'): 'left_shoulder',
    ('lelb', 'lwri'): 'left_elbow',
}
# Demo bone -> DensePose charts (front half, back half). DensePose charts: 1-2 torso, 3 right
# hand, 4 left hand, 5 left foot, 6 right foot, 7/9 right upper leg, 8/10 left upper leg,
# 11/13 right lower leg, 12/14 left lower leg, 15/17 left upper arm, 16/18 right upper arm,
# 19/21 left lower arm, 20/22 right lower arm, 23-24 head.
_BONE_CHARTS = {
    ('pelv', 'spin'): (2, 1), ('spin', 'neck'): (2, 1), ('pelv', 'lhip'): (2, 1),
    ('pelv', 'rhip'): (2, 1), ('neck', 'lsho'): (2, 1), ('neck', 'rsho'): (2, 1),
    ('neck', 'head'): (23, 24),
    ('lhip', 'lkne'): (10, 8), ('rhip', 'rkne'): (9, 7),
    ('lkne', 'lank'): (14, 12), ('rkne', 'rank'): (13, 11),
    ('lsho', 'lelb'): (15, 17), ('rsho', 'relb'): (16, 18),
    ('lelb', 'lwri'): (19, 21), ('relb', 'rwri'): (20, 22),
}
# DensePose chart -> coarse part index of `dp_masks` (1-based: torso, right hand, left hand,
# left foot, right foot, upper leg right/left, lower leg right/left, upper arm left/right,
# lower arm left/right, head).
_CHART_PART = {1: 1, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6, 9: 6, 8: 7, 10: 7, 11: 8, 13: 8,
               12: 9, 14: 9, 15: 10, 17: 10, 16: 11, 18: 11, 19: 12, 21: 12, 20: 13, 22: 13,
               23: 14, 24: 14}
NUM_DP_PARTS = 14
DP_MASK_SIDE = 256


def _mirror_name(name):
    if name.startswith('left_'):
        return 'right_' + name[5:]
    if name.startswith('l'):
        return 'r' + name[1:]
    return name


def _with_right_side(table, key_is_bone):
    """Adds the right-side entries (l -> r) to a left-side table."""
    out = dict(table)
    for key, value in table.items():
        mirrored = tuple(_mirror_name(n) for n in key) if key_is_bone else _mirror_name(key)
        if isinstance(value, str):
            value = _mirror_name(value)
        elif isinstance(value, tuple) and value and isinstance(value[0], tuple):
            value = (tuple(_mirror_name(n) for n in value[0]),) + value[1:]
        out.setdefault(mirrored, value)
    return out


# ----------------------------------------------------------------------------------------
# Landmarks on the demo skeleton
# ----------------------------------------------------------------------------------------

def landmark_attachments(positions, skeleton=None):
    """Attaches canonical points [M, 3] to the nearest demo bone (see the module docstring).

    Returns (bone int32 [M], fraction float64 [M], offset float64 [M, 3]) in the canonical bone
    coordinates of `demo_data.bone_point_positions`.
    """
    skeleton = skeleton or demo_data.load_demo_skeleton()
    q = np.asarray(positions, np.float64)
    c = skeleton.canonical.astype(np.float64)
    start, end = c[skeleton.bones[:, 0]], c[skeleton.bones[:, 1]]
    d = end - start  # [K, 3]
    t = np.clip(np.einsum('mkc,kc->mk', q[:, None] - start, d) / np.sum(d * d, -1), 0, 1)
    foot = start + t[..., None] * d  # [M, K, 3]
    dist = np.linalg.norm(q[:, None] - foot, axis=-1)
    bone = np.argmin(dist, axis=1)  # first bone on ties
    rows = np.arange(len(q))
    fraction = t[rows, bone]
    offset = q - foot[rows, bone]
    return bone.astype(np.int32), fraction, offset


def spec_landmarks(spec_name, skeleton=None):
    """Attachments of all joints of a data spec (in its joint order)."""
    spec = specs.load_spec(spec_name)
    positions = np.array([spec['canonical_positions'][n] for n in spec['joint_names']])
    return landmark_attachments(positions, skeleton)


def pose_landmarks(attachments, joints, bone_rotations, body_scale, skeleton=None):
    """Posed landmark positions [n, M, 3] and their offset directions [n, M, 3] (0 if none)."""
    skeleton = skeleton or demo_data.load_demo_skeleton()
    bone, fraction, offset = attachments
    n, m = joints.shape[0], len(bone)
    shape = (n, m)
    _, posed = demo_data.bone_point_positions(
        np.broadcast_to(bone, shape), np.broadcast_to(fraction, shape),
        np.broadcast_to(offset, shape + (3,)), skeleton, joints, bone_rotations, body_scale)
    rotated = np.einsum('nmij,mj->nmi', bone_rotations[:, bone], offset)
    return posed, rotated


def shown_surface_depth(joints, intrinsics, body_scale, bones, pixels, skeleton=None):
    """Depth (metres) of the rendered capsule surface of bone `bones` [n, M] at integer pixels
    `pixels` [n, M, 2], by the renderer's formula (`demo_data._render_chunk`): axis depth at
    the closest point of the bone's projected segment minus the radius times the bulge."""
    skeleton = skeleton or demo_data.load_demo_skeleton()
    n = joints.shape[0]
    batch = np.arange(n)[:, None]
    uv = demo_data.project(joints, intrinsics)  # [n, J, 2]
    i, j = skeleton.bones[bones, 0], skeleton.bones[bones, 1]  # [n, M]
    a, b = uv[batch, i], uv[batch, j]
    z0, z1 = joints[batch, i, 2], joints[batch, j, 2]
    focal = intrinsics[:, 0, 0].astype(np.float64)[:, None]
    radius_m = body_scale[:, None] * skeleton.radii[bones]
    r0 = np.maximum(focal * radius_m / z0, demo_data.MIN_RADIUS_PX)
    r1 = np.maximum(focal * radius_m / z1, demo_data.MIN_RADIUS_PX)
    d = b - a
    t = np.clip(np.sum((pixels - a) * d, -1) / np.maximum(np.sum(d * d, -1), 1e-6), 0, 1)
    dist2 = np.sum((pixels - a - t[..., None] * d) ** 2, -1)
    bulge = np.sqrt(np.maximum(1 - dist2 / np.square(r0 + t * (r1 - r0)), 0))
    return z0 + t * (z1 - z0) - radius_m * bulge


def keypoint_visibility(points2d, posed, offset_dirs, bones, scenes, skeleton=None):
    """COCO flags [n, M] (0 outside the image, 1 occluded, 2 visible) for projected landmarks.

    points2d [n, M, 2] pixels, posed [n, M, 3] camera metres, offset_dirs [n, M, 3] (camera
    frame), bones [M] attachment bones; `scenes` from `render_scenes`. Occluded: the landmark
    is turned away from the camera (its offset from the bone axis points away), or the surface
    rendered at its pixel lies more than its own capsule radius + 2 cm in front of it.
    """
    skeleton = skeleton or demo_data.load_demo_skeleton()
    bone_index = scenes['bone_index']
    n, height, width = bone_index.shape
    inside = (np.all(np.isfinite(points2d), -1) & (posed[..., 2] > 0) &
              (points2d[..., 0] >= 0) & (points2d[..., 0] <= width - 1) &
              (points2d[..., 1] >= 0) & (points2d[..., 1] <= height - 1))
    cols = np.clip(np.round(np.nan_to_num(points2d[..., 0])), 0, width - 1).astype(int)
    rows = np.clip(np.round(np.nan_to_num(points2d[..., 1])), 0, height - 1).astype(int)
    shown = bone_index[np.arange(n)[:, None], rows, cols]  # [n, M]
    depth = shown_surface_depth(scenes['joints'], scenes['intrinsics'], scenes['body_scale'],
                                np.maximum(shown, 0), np.stack([cols, rows], -1), skeleton)
    own_radius = scenes['body_scale'][:, None] * skeleton.radii[bones]
    hidden = (shown >= 0) & (depth < posed[..., 2] - own_radius - 0.02)
    faces_away = np.sum(offset_dirs * posed, -1) > 1e-9
    return np.where(inside, np.where(hidden | faces_away, 1, 2), 0).astype(np.int64)


# ----------------------------------------------------------------------------------------
# Scenes (one person per image, camera = demo camera of a square image)
# ----------------------------------------------------------------------------------------

def render_scenes(rng, num_images, side, skeleton=None):
    """Random demo people rendered into square `side` images.

    Returns dict: image uint8 [n, S, S, 3], bone_index int32 [n, S, S], joints (camera metres)
    [n, J, 3], bone_rotations [n, K, 3, 3], body_scale [n], intrinsics float32 [n, 3, 3].
    """
    skeleton = skeleton or demo_data.load_demo_skeleton()
    people = demo_data.sample_people(rng, num_images, skeleton)
    margin = people['body_scale'] * skeleton.radii.max()
    joints, intrinsics, _ = demo_data.place_in_camera(rng, people['joints'], margin, side)
    image, bone_index = demo_data.render_people(
        joints, intrinsics, people['body_scale'], side, int(rng.integers(2 ** 63)), skeleton,
        image_dtype='uint8')
    return dict(image=image, bone_index=bone_index, joints=joints,
                bone_rotations=people['bone_rotations'], body_scale=people['body_scale'],
                intrinsics=intrinsics)


def _capsule_polygons(joints, intrinsics, body_scale, shape, skeleton, points_per_end=12):
    """COCO polygon segmentation of one person: per bone the convex hull of its two projected
    end discs (the union of the polygons is the rendered silhouette, up to polygon sampling)."""
    height, width = shape
    uv = demo_data.project(joints[None], intrinsics[None])[0]
    focal = float(intrinsics[0, 0])
    angles = np.linspace(0, 2 * np.pi, points_per_end, endpoint=False)
    circle = np.stack([np.cos(angles), np.sin(angles)], 1)
    polygons = []
    for k, (i, j) in enumerate(skeleton.bones):
        radius = body_scale * skeleton.radii[k]
        ends = []
        for joint in (i, j):
            r_px = max(focal * radius / joints[joint, 2], demo_data.MIN_RADIUS_PX)
            ends.append(uv[joint] + r_px * circle)
        points = np.concatenate(ends)
        hull = points[scipy.spatial.ConvexHull(points).vertices]
        hull[:, 0] = np.clip(hull[:, 0], 0, width - 1)
        hull[:, 1] = np.clip(hull[:, 1], 0, height - 1)
        polygons.append([round(float(v), 2) for v in hull.reshape(-1)])
    return polygons


def _box_of_mask(mask, pad=0):
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return None
    height, width = mask.shape
    x0, y0 = max(cols.min() - pad, 0), max(rows.min() - pad, 0)
    x1, y1 = min(cols.max() + 1 + pad, width), min(rows.max() + 1 + pad, height)
    return [int(x0), int(y0), int(x1 - x0), int(y1 - y0)]


def _write_jpeg(path, image):
    import tensorflow as tf
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(tf.io.encode_jpeg(image, quality=JPEG_QUALITY).numpy())


def _keypoint_triplets(points2d, flags):
    """COCO flat keypoints: (x, y, v) with x = y = 0 where v = 0."""
    out = []
    for (x, y), v in zip(points2d, flags):
        out += [0, 0, 0] if v == 0 else [round(float(x), 2), round(float(y), 2), int(v)]
    return out


def _scene_keypoints(scenes, attachments, skeleton):
    posed, dirs = pose_landmarks(attachments, scenes['joints'], scenes['bone_rotations'],
                                 scenes['body_scale'], skeleton)
    points2d = demo_data.project(posed, scenes['intrinsics'])
    flags = keypoint_visibility(points2d, posed, dirs, attachments[0], scenes, skeleton)
    return points2d, flags


def _person_annotation(ann_id, image_id, scenes, k, keypoints2d, flags, skeleton):
    side = scenes['image'].shape[1]
    mask = scenes['bone_index'][k] >= 0
    return dict(
        id=ann_id, image_id=image_id, category_id=1, iscrowd=0,
        segmentation=_capsule_polygons(scenes['joints'][k], scenes['intrinsics'][k],
                                       scenes['body_scale'][k], (side, side), skeleton),
        area=float(np.count_nonzero(mask)), bbox=[float(v) for v in _box_of_mask(mask)],
        num_keypoints=int(np.count_nonzero(flags[:17])),
        keypoints=_keypoint_triplets(keypoints2d[:17], flags[:17]))


def _categories():
    spec = specs.load_spec('coco')
    return [dict(supercategory='person', id=1, name='person', keypoints=spec['joint_names'],
                 skeleton=[])]


def write_coco(root, rng, num_images, side, variant='body', first_image_id=1):
    """Writes a COCO (variant 'body', 2014 names) or COCO-WholeBody ('wholebody', 2017) folder."""
    skeleton = demo_data.load_demo_skeleton()
    wholebody = variant == 'wholebody'
    spec_name = 'coco_wholebody' if wholebody else 'coco'
    attachments = spec_landmarks(spec_name, skeleton)
    scenes = render_scenes(rng, num_images, side, skeleton)
    points2d, flags = _scene_keypoints(scenes, attachments, skeleton)
    folder = 'train2017' if wholebody else 'train2014'
    parts = [p for p in specs.load_spec(spec_name).get('parts', ()) if p['name'] != 'body']
    images, annotations = [], []
    for k in range(num_images):
        image_id = first_image_id + k
        file_name = (f'{image_id:012d}.jpg' if wholebody
                     else f'COCO_train2014_{image_id:012d}.jpg')
        _write_jpeg(os.path.join(root, folder, file_name), scenes['image'][k])
        images.append(dict(license=1, file_name=file_name, height=side, width=side,
                           id=image_id, date_captured='2013-11-14 16:28:13', flickr_url='',
                           coco_url=''))
        ann = _person_annotation(100000 + image_id, image_id, scenes, k, points2d[k], flags[k],
                                 skeleton)
        if wholebody:
            for part in parts:
                s = slice(part['start'], part['start'] + part['count'])
                part_flags = flags[k, s]
                ann[part['field']] = _keypoint_triplets(points2d[k, s], part_flags)
                labelled = part_flags > 0
                valid = bool(np.count_nonzero(labelled) >= max(1, part['count'] // 2))
                ann[part['valid_field']] = valid
                box_field = {'face': 'face_box', 'lefthand': 'lefthand_box',
                             'righthand': 'righthand_box'}.get(part['name'])
                if box_field:
                    pts = points2d[k, s][labelled]
                    ann[box_field] = ([0.0] * 4 if not valid else [
                        round(float(v), 2) for v in (*pts.min(0), *(pts.max(0) - pts.min(0)))])
        annotations.append(ann)
    name = ('coco_wholebody_train_v1.0.json' if wholebody
            else 'person_keypoints_train2014.json')
    _write_json(os.path.join(root, 'annotations', name),
                dict(info=dict(description='nlf-tf synthetic ' + spec_name, version='1.0'),
                     licenses=[dict(id=1, name='synthetic', url='')], images=images,
                     annotations=annotations, categories=_categories()))
    return root


def _write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(data, f)


# ----------------------------------------------------------------------------------------
# Body model and UV layout
# ----------------------------------------------------------------------------------------

def build_tube_mesh(skeleton=None):
    """The coarse body mesh on the demo skeleton (canonical frame) and its UV layout.

    Returns a dict of NumPy arrays:
      vertices [V, 3] canonical metres; vertex_bone [V]; vertex_fraction [V]; vertex_offset
      [V, 3] (canonical bone coordinates of each vertex); faces [F, 3]; face_bone [F];
      face_chart [F] (DensePose chart 1..24); face_uv [F, 3] (UV-vertex ids); uv [U, 2];
      uv_vertex [U] (mesh vertex of each UV vertex); ring_start [K] (first vertex of each bone).
    """
    skeleton = skeleton or demo_data.load_demo_skeleton()
    names = skeleton.names
    c = skeleton.canonical.astype(np.float64)
    n_rings, n_ring = len(RING_FRACTIONS), RING_SIZE
    half = n_ring // 2
    angles = 2 * np.pi * np.arange(n_ring) / n_ring
    forward = np.array([0.0, 0.0, 1.0])

    charts = {}
    for k, (i, j) in enumerate(skeleton.bones):
        key = (names[i], names[j])
        if key not in _BONE_CHARTS:
            raise ValueError(f'demo bone {key} has no DensePose chart assignment')
        charts[k] = _BONE_CHARTS[key]
    # Strip slot of each (bone, half) within its chart, in bone order.
    slots, slot_count = {}, {}
    for k in range(skeleton.num_bones):
        for h in range(2):
            chart = charts[k][h]
            slots[k, h] = slot_count.get(chart, 0)
            slot_count[chart] = slots[k, h] + 1

    vertices, vertex_bone, vertex_fraction, vertex_offset = [], [], [], []
    faces, face_bone, face_chart, face_uv, uv, uv_vertex, ring_start = [], [], [], [], [], [], []
    for k, (i, j) in enumerate(skeleton.bones):
        d = c[j] - c[i]
        if abs(d[2]) > 1e-9:
            raise ValueError('the tube mesh needs demo bones in the z = 0 plane')
        side = np.cross(d, forward)
        side /= np.linalg.norm(side)
        base = len(vertices)
        ring_start.append(base)
        radius = float(skeleton.radii[k])
        for a in RING_FRACTIONS:
            for phi in angles:
                offset = radius * (np.cos(phi) * side + np.sin(phi) * forward)
                vertices.append((1 - a) * c[i] + a * c[j] + offset)
                vertex_bone.append(k)
                vertex_fraction.append(a)
                vertex_offset.append(offset)
        for h in range(2):  # h = 0: angles [0, pi] (sin >= 0, the front), 1: the back
            chart = charts[k][h]
            n_slots = slot_count[chart]
            uv_base = len(uv)
            for r, a in enumerate(RING_FRACTIONS):
                for col in range(half + 1):
                    u = (slots[k, h] + 0.05 + 0.9 * col / half) / n_slots
                    uv.append((u, 0.05 + 0.9 * a))
                    uv_vertex.append(base + r * n_ring + (h * half + col) % n_ring)
            for r in range(n_rings - 1):
                for col in range(half):
                    def vid(rr, cc):
                        return base + rr * n_ring + (h * half + cc) % n_ring

                    def uid(rr, cc):
                        return uv_base + rr * (half + 1) + cc
                    for tri in (((r, col), (r, col + 1), (r + 1, col + 1)),
                                ((r, col), (r + 1, col + 1), (r + 1, col))):
                        faces.append([vid(*p) for p in tri])
                        face_uv.append([uid(*p) for p in tri])
                        face_bone.append(k)
                        face_chart.append(chart)
    return dict(
        vertices=np.array(vertices), vertex_bone=np.array(vertex_bone, np.int32),
        vertex_fraction=np.array(vertex_fraction), vertex_offset=np.array(vertex_offset),
        faces=np.array(faces, np.int64), face_bone=np.array(face_bone, np.int32),
        face_chart=np.array(face_chart, np.int64), face_uv=np.array(face_uv, np.int64),
        uv=np.array(uv), uv_vertex=np.array(uv_vertex, np.int64),
        ring_start=np.array(ring_start, np.int64))


def build_smpl_model(mesh=None, skeleton=None, num_betas=10):
    """The synthetic body model dict in the SMPL file layout (SMPL axes: y up)."""
    skeleton = skeleton or demo_data.load_demo_skeleton()
    mesh = mesh or build_tube_mesh(skeleton)
    names = skeleton.names
    bone_of = {(names[i], names[j]): k for k, (i, j) in enumerate(skeleton.bones)}
    to_smpl = np.array([1.0, -1.0, 1.0])
    v_template = mesh['vertices'] * to_smpl
    n_verts, n_ring = len(v_template), RING_SIZE

    places = _with_right_side(_SMPL_JOINT_PLACES, key_is_bone=False)
    regressor = np.zeros([len(SMPL_JOINT_NAMES), n_verts])
    for row, name in enumerate(SMPL_JOINT_NAMES):
        bone_names, a, fwd = places[name]
        k = bone_of[bone_names]
        first = mesh['ring_start'][k]
        last = first + (len(RING_FRACTIONS) - 1) * n_ring
        # Ring means lie on the bone axis: any point of the axis line is an affine combination
        # of the first and last ring means.
        regressor[row, first:first + n_ring] += (1 - a) / n_ring
        regressor[row, last:last + n_ring] += a / n_ring
        if fwd:
            # The ring vertex at angle pi/2 is `radius` straight forward of the ring centre.
            c = fwd / float(skeleton.radii[k])
            regressor[row, last:last + n_ring] -= c / n_ring
            regressor[row, last + n_ring // 4] += c

    skin = _with_right_side(_BONE_SKIN_JOINT, key_is_bone=True)
    weights = np.zeros([n_verts, len(SMPL_JOINT_NAMES)])
    for v, k in enumerate(mesh['vertex_bone']):
        i, j = skeleton.bones[k]
        weights[v, SMPL_JOINT_NAMES.index(skin[(names[i], names[j])])] = 1.0

    joints = regressor @ v_template
    shapedirs = np.zeros([n_verts, 3, num_betas])
    shapedirs[:, :, 0] = 0.1 * (v_template - joints[0])  # height: scale about the pelvis
    shapedirs[:, :, 1] = 0.2 * mesh['vertex_offset'] * to_smpl  # girth: tube radius
    parents = np.array(SMPL_PARENTS, np.int64)
    parents[parents < 0] = 2 ** 32 - 1  # how the official files store the root's parent
    return dict(
        v_template=v_template, shapedirs=shapedirs,
        posedirs=np.zeros([n_verts, 3, 9 * (len(SMPL_JOINT_NAMES) - 1)]),
        J_regressor=regressor, weights=weights,
        kintree_table=np.stack([parents, np.arange(len(SMPL_JOINT_NAMES))]),
        f=mesh['faces'].astype(np.uint32))


def write_uv_processed(path, mesh):
    """UV_Processed.mat in the official field layout (1-based indices, MATLAB shapes)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scipy.io.savemat(path, dict(
        All_FaceIndices=mesh['face_chart'].astype(np.float64)[:, None],
        All_Faces=(mesh['face_uv'] + 1).astype(np.float64),
        All_U_norm=mesh['uv'][:, :1].copy(), All_V_norm=mesh['uv'][:, 1:].copy(),
        All_vertices=(mesh['uv_vertex'] + 1).astype(np.float64)[None]))


# ----------------------------------------------------------------------------------------
# DensePose-COCO
# ----------------------------------------------------------------------------------------

def sample_dense_points(rng, mesh, scenes, k, max_points=MAX_DP_POINTS, num_candidates=400,
                        skeleton=None):
    """Visible mesh points of person k: (face [N], barycentric [N, 3], pixel [N, 2]).

    Candidates are uniform over the mesh surface; a point is kept if it faces
    the camera (its offset from the bone axis points towards the camera) and its pixel shows its
    own bone.
    """
    skeleton = skeleton or demo_data.load_demo_skeleton()
    corners3d = mesh['vertices'][mesh['faces']]
    areas = 0.5 * np.linalg.norm(np.cross(corners3d[:, 1] - corners3d[:, 0],
                                          corners3d[:, 2] - corners3d[:, 0]), axis=-1)
    faces = rng.choice(len(areas), num_candidates, p=areas / areas.sum())  # uniform on the area
    r1, r2 = rng.uniform(size=(2, num_candidates))
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], 1)
    corners = mesh['faces'][faces]  # [N, 3]
    bone = mesh['face_bone'][faces]
    fraction = np.einsum('nc,nc->n', mesh['vertex_fraction'][corners], bary)
    offset = np.einsum('ncx,nc->nx', mesh['vertex_offset'][corners], bary)
    joints = scenes['joints'][k:k + 1]
    rotations = scenes['bone_rotations'][k:k + 1]
    _, posed = demo_data.bone_point_positions(
        bone[None], fraction[None], offset[None], skeleton, joints, rotations,
        scenes['body_scale'][k:k + 1])
    posed = posed[0]
    pixels = demo_data.project(posed[None], scenes['intrinsics'][k:k + 1])[0]
    normals = np.einsum('nij,nj->ni', rotations[0][bone], offset)
    bone_index = scenes['bone_index'][k]
    height, width = bone_index.shape
    inside = ((pixels[:, 0] >= 0) & (pixels[:, 0] <= width - 1) & (pixels[:, 1] >= 0) &
              (pixels[:, 1] <= height - 1) & (posed[:, 2] > 0))
    cols = np.clip(np.round(pixels[:, 0]), 0, width - 1).astype(int)
    rows = np.clip(np.round(pixels[:, 1]), 0, height - 1).astype(int)
    keep = inside & (np.sum(normals * posed, 1) < 0) & (bone_index[rows, cols] == bone)
    keep = np.flatnonzero(keep)[:max_points]
    return faces[keep], bary[keep], pixels[keep]


def _dp_masks(bone_index, box, face_chart_of_bone):
    """The 14 coarse part masks (256 x 256 over the box, nearest sampling) as COCO RLE or []."""
    from nlf_tf.data import rle
    x, y, w, h = box
    grid = (np.arange(DP_MASK_SIDE) + 0.5) / DP_MASK_SIDE
    cols = np.clip(np.floor(x + grid * w), 0, bone_index.shape[1] - 1).astype(int)
    rows = np.clip(np.floor(y + grid * h), 0, bone_index.shape[0] - 1).astype(int)
    patch = bone_index[rows[:, None], cols[None, :]]
    part_of_bone = np.array([_CHART_PART[c] for c in face_chart_of_bone] + [0])
    parts = part_of_bone[patch]  # -1 (background) picks the trailing 0
    masks = []
    for p in range(1, NUM_DP_PARTS + 1):
        mask = parts == p
        masks.append(rle.encode(mask) if mask.any() else [])
    return masks


def write_densepose(root, rng, num_images, side, first_image_id=1):
    """Writes a DensePose-COCO folder (JSON, images, UV_data/UV_Processed.mat)."""
    skeleton = demo_data.load_demo_skeleton()
    mesh = build_tube_mesh(skeleton)
    write_uv_processed(os.path.join(root, 'UV_data', 'UV_Processed.mat'), mesh)
    attachments = spec_landmarks('densepose_coco', skeleton)
    scenes = render_scenes(rng, num_images, side, skeleton)
    points2d, flags = _scene_keypoints(scenes, attachments, skeleton)
    chart_of_bone = [_BONE_CHARTS[(skeleton.names[i], skeleton.names[j])][0]
                     for i, j in skeleton.bones]
    images, annotations = [], []
    for k in range(num_images):
        image_id = first_image_id + k
        file_name = f'COCO_train2014_{image_id:012d}.jpg'
        _write_jpeg(os.path.join(root, 'train2014', file_name), scenes['image'][k])
        images.append(dict(license=1, file_name=file_name, height=side, width=side, id=image_id))
        ann = _person_annotation(200000 + image_id, image_id, scenes, k, points2d[k], flags[k],
                                 skeleton)
        # Integer box (the reader rounds it) padded by a pixel so every point lies inside.
        box = _box_of_mask(scenes['bone_index'][k] >= 0, pad=1)
        ann['bbox'] = [float(v) for v in box]
        faces, bary, pixels = sample_dense_points(rng, mesh, scenes, k, skeleton=skeleton)
        uv = np.einsum('ncx,nc->nx', mesh['uv'][mesh['face_uv'][faces]], bary)
        x0, y0, w, h = box
        dp = np.clip((pixels - [x0, y0]) / [w, h] * 255.0, 0, 255)
        ann.update(
            dp_masks=_dp_masks(scenes['bone_index'][k], box, chart_of_bone),
            dp_I=[float(c) for c in mesh['face_chart'][faces]],
            dp_U=[float(v) for v in uv[:, 0]], dp_V=[float(v) for v in uv[:, 1]],
            dp_x=[float(v) for v in dp[:, 0]], dp_y=[float(v) for v in dp[:, 1]])
        annotations.append(ann)
    _write_json(os.path.join(root, 'DensePose_COCO', 'densepose_coco_2014_train.json'),
                dict(images=images, annotations=annotations, categories=_categories()))
    return root


# ----------------------------------------------------------------------------------------
# MADS
# ----------------------------------------------------------------------------------------

# Body frame (y down, as demo people are posed) -> MADS world (y up): 180 degrees about x.
BODY_TO_WORLD = np.diag([1.0, -1.0, -1.0])


def look_at_rotation(position, target, world_up=(0, 1, 0)):
    """World->camera rotation of a camera at `position` looking at `target` (x right, y down)."""
    z = np.asarray(target, np.float64) - position
    z /= np.linalg.norm(z)
    x = np.cross(-np.asarray(world_up, np.float64), z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z])


def mads_cameras(rng, frame_shape=MADS_FRAME_SHAPE, num_cameras=3):
    """Random Bouguet calibrations around the origin: list of dicts KK, kc, R, center (m)."""
    height, width = frame_shape
    cameras = []
    for c in range(num_cameras):
        azimuth = np.deg2rad(120 * c + rng.uniform(-15, 15))
        distance = rng.uniform(4.0, 5.0)
        center = np.array([distance * np.sin(azimuth), rng.uniform(1.0, 1.6),
                           distance * np.cos(azimuth)])
        rot = look_at_rotation(center, (0.0, 0.9, 0.0))
        focal = 0.72 * height * distance / 1.9  # a 1.9 m person fills ~72 % of the height
        kk = np.array([[focal * rng.uniform(0.99, 1.01), 0, (width - 1) / 2 + rng.uniform(-4, 4)],
                       [0, focal, (height - 1) / 2 + rng.uniform(-4, 4)], [0, 0, 1]])
        kc = np.array([rng.uniform(-0.12, -0.05), rng.uniform(0.0, 0.05),
                       rng.uniform(-1e-3, 1e-3), rng.uniform(-1e-3, 1e-3), 0.0])
        cameras.append(dict(KK=kk, kc=kc, R=rot, center=center))
    return cameras


def _rodrigues_vector(rot):
    from scipy.spatial.transform import Rotation
    return Rotation.from_matrix(rot).as_rotvec()


def write_bouguet_calibration(path, camera, frame_shape):
    """Calib_Cam<i>.mat with the Bouguet toolbox fields (T_ext in mm)."""
    kk, rot = camera['KK'], camera['R']
    t_ext_mm = -rot @ camera['center'] * 1000.0
    height, width = frame_shape
    scipy.io.savemat(path, dict(
        KK=kk, kc=camera['kc'][:, None], fc=np.array([[kk[0, 0]], [kk[1, 1]]]),
        cc=np.array([[kk[0, 2]], [kk[1, 2]]]), alpha_c=np.zeros([1, 1]),
        om_ext=_rodrigues_vector(rot)[:, None], T_ext=t_ext_mm[:, None], Rc_ext=rot,
        nx=np.array([[width]], np.float64), ny=np.array([[height]], np.float64)))


def mads_scene(rng, num_frames, frame_shape=MADS_FRAME_SHAPE, skeleton=None):
    """One synthetic MADS sequence: world poses, cameras, rendered distorted frames.

    Returns dict: joints_world [F, J, 3] (demo joints, metres), bone_rotations_world
    [F, K, 3, 3], body_scale [F], cameras (list of 3 dicts), frames [3][F, H, W, 3] uint8,
    bone_index [3][F, H, W] (-1 = background, in the distorted frames).
    """
    from nlf_tf.data.camera import Camera

    skeleton = skeleton or demo_data.load_demo_skeleton()
    people = demo_data.sample_people(rng, num_frames, skeleton)
    joints = np.einsum('ij,fmj->fmi', BODY_TO_WORLD, people['joints'])
    rotations = np.einsum('ij,fkjl->fkil', BODY_TO_WORLD, people['bone_rotations'])
    # Lowest joint (plus the ankle capsule) on the floor y = 0, a random spot near the origin.
    shift = np.zeros([num_frames, 3])
    shift[:, 0], shift[:, 2] = rng.uniform(-0.4, 0.4, (2, num_frames))
    shift[:, 1] = 0.06 - joints[..., 1].min(axis=1)
    joints = joints + shift[:, None]
    cameras = mads_cameras(rng, frame_shape)

    height, width = frame_shape
    canvas = max(height, width) + 2 * MADS_CANVAS_PAD
    frames, bone_indices = [], []
    for cam in cameras:
        joints_cam = np.einsum('ij,fmj->fmi', cam['R'], joints - cam['center'])
        k_canvas = cam['KK'].copy()
        k_canvas[0, 2] += (canvas - width) / 2
        k_canvas[1, 2] += (canvas - height) / 2
        images, bone_index = demo_data.render_people(
            joints_cam, np.repeat(k_canvas[None].astype(np.float32), num_frames, 0),
            people['body_scale'], canvas, int(rng.integers(2 ** 63)), skeleton,
            image_dtype='uint8')
        canvas_camera = Camera(k_canvas, cam['R'], cam['center'])
        distorted = Camera(cam['KK'], cam['R'], cam['center'], distortion=cam['kc'])
        frames.append(np.stack([canvas_camera.reproject_image(im, distorted, frame_shape)
                                for im in images]))
        bone_indices.append(np.stack([
            canvas_camera.reproject_image(b, distorted, frame_shape, interpolation='nearest',
                                          border_value=-1) for b in bone_index]))
    return dict(joints_world=joints, bone_rotations_world=rotations,
                body_scale=people['body_scale'], cameras=cameras, frames=frames,
                bone_index=bone_indices)


def write_mads(root, rng, num_frames, frame_shape=MADS_FRAME_SHAPE):
    """Writes a MADS folder: one sequence, 3 cameras (AVI + Bouguet .mat), GTpose2 in mm."""
    from nlf_tf.data import avi

    skeleton = demo_data.load_demo_skeleton()
    scene = mads_scene(rng, num_frames, frame_shape, skeleton)
    attachments = spec_landmarks('mads', skeleton)
    posed, _ = pose_landmarks(attachments, scene['joints_world'],
                              scene['bone_rotations_world'], scene['body_scale'], skeleton)
    folder = os.path.join(root, 'multi_view_data', MADS_ACTION)
    os.makedirs(folder, exist_ok=True)
    prefix = f'{MADS_ACTION}_{MADS_SEQUENCE}'
    cells = np.empty((1, num_frames), dtype=object)
    for f in range(num_frames):
        cells[0, f] = posed[f] * 1000.0
    scipy.io.savemat(os.path.join(folder, f'{prefix}_GT.mat'), {'GTpose2': cells})
    for c, cam in enumerate(scene['cameras']):
        write_bouguet_calibration(os.path.join(folder, f'Calib_Cam{c}.mat'), cam, frame_shape)
        avi.write_mjpeg_avi(os.path.join(folder, f'{prefix}_C{c}.avi'), scene['frames'][c],
                            fps=MADS_FPS, quality=JPEG_QUALITY)
    return root


# ----------------------------------------------------------------------------------------
# All datasets
# ----------------------------------------------------------------------------------------

def _settings(seed, num_images, image_side, mads_frames):
    return dict(format_version=FORMAT_VERSION, seed=int(seed), num_images=int(num_images),
                image_side=int(image_side), mads_frames=int(mads_frames),
                agora_images=_agora_images(num_images),
                behave_frames=_behave_frames(num_images))


def _agora_images(num_images):
    return max(2, int(num_images) // 3)  # 2-3 people each


def _behave_frames(num_images):
    return max(3, int(num_images) // 6)  # x 4 Kinects x 2 training sequences


def folders_of(out_root):
    """The paths of a synthetic tree (whether or not it has been written)."""
    return dict(
        coco=os.path.join(out_root, 'coco'),
        coco_wholebody=os.path.join(out_root, 'coco_wholebody'),
        densepose_coco=os.path.join(out_root, 'densepose_coco'),
        mads=os.path.join(out_root, 'mads'),
        agora=os.path.join(out_root, 'agora'),
        behave=os.path.join(out_root, 'behave'),
        body_models=os.path.join(out_root, 'body_models'),
        smpl_model=os.path.join(out_root, 'body_models', 'smpl_synthetic.npz'))


def write_synthetic_datasets(out_root, seed=0, num_images=DEFAULT_NUM_IMAGES,
                             image_side=DEFAULT_IMAGE_SIDE, mads_frames=None, log=None):
    """Writes the six synthetic dataset folders and the body models under `out_root`.

    num_images: images per 2D dataset (one person each); image_side: their (square) size in
      pixels (>= 256 so that people pass COCO's 200 px keypoint-box filter);
      mads_frames: frames per MADS camera (default max(4, num_images // 3)).
    Idempotent: a complete tree written with the same settings is reused; the tree is built in a
    temporary sibling folder and renamed into place, so an interrupted run leaves no partial
    `out_root`. Returns `folders_of(out_root)`.
    """
    if int(image_side) < 256:
        raise ValueError(f'image_side must be >= 256 (COCO keypoint-box filter), got {image_side}')
    if int(num_images) < 1:
        raise ValueError(f'num_images must be >= 1, got {num_images}')
    mads_frames = max(4, int(num_images) // 3) if mads_frames is None else int(mads_frames)
    settings = _settings(seed, num_images, image_side, mads_frames)
    out_root = os.path.abspath(os.fspath(out_root))
    settings_path = os.path.join(out_root, SETTINGS_FILE)
    if os.path.exists(settings_path):
        with open(settings_path, encoding='utf-8') as f:
            saved = json.load(f)
        if saved != settings:
            raise ValueError(f'{out_root} holds synthetic data written with other settings '
                             f'({saved}); delete it or choose another folder')
        return folders_of(out_root)
    if os.path.exists(out_root) and os.listdir(out_root):
        raise ValueError(f'{out_root} exists and is not a synthetic data folder '
                         f'(no {SETTINGS_FILE}); refusing to write into it')

    tmp = f'{out_root}.tmp{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    paths = folders_of(tmp)
    n, side = int(num_images), int(image_side)
    write_coco(paths['coco'], np.random.default_rng([seed, 1]), n, side, 'body')
    write_coco(paths['coco_wholebody'], np.random.default_rng([seed, 2]), n, side, 'wholebody')
    write_densepose(paths['densepose_coco'], np.random.default_rng([seed, 3]), n, side)
    write_mads(paths['mads'], np.random.default_rng([seed, 4]), mads_frames)
    os.makedirs(os.path.dirname(paths['smpl_model']), exist_ok=True)
    np.savez(paths['smpl_model'], **build_smpl_model())
    from nlf_tf.body_models import synthetic as synthetic_body_models
    from nlf_tf.data import synthetic_agora, synthetic_behave
    synthetic_body_models.write_synthetic_body_models(paths['body_models'], seed=seed)
    synthetic_agora.write_agora(paths['agora'], int(seed) + 5, paths['body_models'],
                                num_images=settings['agora_images'])
    synthetic_behave.write_behave(paths['behave'], np.random.default_rng([seed, 6]),
                                  paths['body_models'],
                                  frames_per_sequence=settings['behave_frames'])
    _write_json(os.path.join(tmp, SETTINGS_FILE), settings)
    if os.path.isdir(out_root):
        os.rmdir(out_root)  # empty (checked above)
    os.replace(tmp, out_root)
    if log:
        log(f'Wrote synthetic COCO, COCO-WholeBody, DensePose-COCO, MADS, AGORA and BEHAVE '
            f'to {out_root}')
    return folders_of(out_root)


def reader_calls(folders):
    """{dataset: zero-argument callable returning the real reader's record iterator}."""
    from nlf_tf.data import readers

    options = dict(coco=dict(year=2014), coco_wholebody={},
                   densepose_coco=dict(smpl_model=folders['smpl_model']), mads={},
                   agora=dict(body_model_dir=folders['body_models']),
                   behave=dict(body_model_dir=folders['body_models']))
    return {name: (lambda name=name: readers.get_reader(name)(
        folders[name], split='train', **options[name])) for name in ALL_DATASETS}


def prepare_synthetic(out_root, prepared_root, seed=0, num_images=DEFAULT_NUM_IMAGES,
                      image_side=DEFAULT_IMAGE_SIDE, mads_frames=None, num_shards=2,
                      num_workers=2, log=None):
    """Writes (if absent) the synthetic folders and prepares each with the real reader.

    Returns {dataset: prepared folder}. A prepared folder that is already finished (has its
    manifest) is reused by `prepare_dataset`.
    """
    from nlf_tf.data import prepare

    quiet = log or (lambda *args, **kwargs: None)
    folders = write_synthetic_datasets(out_root, seed, num_images, image_side, mads_frames, log)
    prepared = {}
    for name, examples in reader_calls(folders).items():
        out_dir = os.path.join(os.fspath(prepared_root), name)
        prepare.prepare_dataset(examples, out_dir, name, 'train', num_shards=num_shards,
                                log=quiet, progress_every=0, num_workers=num_workers)
        prepared[name] = out_dir
    return prepared


# ----------------------------------------------------------------------------------------
# Training data for --data=synthetic
# ----------------------------------------------------------------------------------------

def build_synthetic_data(cfg, start_step, end_step, log=print, input_context=None):
    """`data_sources.TrainingData` of --data=synthetic for the micro-steps start..end-1.

    Writes (if absent) the synthetic native folders under <logdir>/synthetic_data, prepares them
    under <logdir>/synthetic_prepared and reads all four categories from them exactly like
    --data=prepared: param from AGORA and BEHAVE (with the synthetic body models of
    <logdir>/synthetic_data/body_models, whose canonical assets are generated on first use),
    kp3d from MADS, dense from DensePose-COCO, kp2d from COCO + COCO-WholeBody.
    """
    from nlf_tf import data_sources

    def summary_only(line):  # the per-example skip listing of prepare is too long here
        if not line.lstrip().startswith('e.g.'):
            log(line)

    root = os.path.join(cfg.logdir, 'synthetic_data')
    prepared = prepare_synthetic(
        root, os.path.join(cfg.logdir, 'synthetic_prepared'), seed=cfg.seed,
        num_images=cfg.get('synthetic_num_images') or DEFAULT_NUM_IMAGES, log=summary_only)
    sources = data_sources.prepared_sources(
        [prepared[name] for name in ALL_DATASETS], cfg.dataset_weights)
    return data_sources.training_data_of_sources(
        cfg, sources, start_step, end_step, input_context=input_context,
        body_model_dir=folders_of(root)['body_models'], num_interior=SYNTHETIC_NUM_INTERIOR,
        log=log)
