"""Procedural demo training data: random stick-figure people, rendered, with all four kinds of
ground truth the trainer consumes (no downloads).

The skeleton (joint names, canonical T-pose, mirror pairs, root, bones) is read from the data spec
`demo.json` (see `nlf_tf.specs`). Its joints form the global joint table of a demo run: `point_ids`
index it in JSON order, and `demo_joint_table()` gives it to the trainer.

A scene is one posed person seen by a pinhole camera: random joint rotations, limb-length scale,
global rotation (mostly about the vertical axis), distance 3-8 m and a focal length chosen so the
person roughly fills the square crop, principal point at the crop centre ((S - 1) / 2 with pixel
centres at integer coordinates, the convention of the trainer's un-mirroring u -> S - 1 - u).

Rendering: every bone is a capsule with a colour that depends only on the bone's canonical position
up to mirroring (a left bone and its right partner share a colour), darker towards the proximal end
of the bone and towards the capsule's silhouette. The trainer mirrors images and negates the
canonical x of the queries, so a colour scheme that is itself mirror symmetric keeps a flipped image
consistent with its flipped queries; the along-bone gradient still makes every point identifiable up
to that symmetry. Capsules are composited with a per-pixel depth test (the same result as drawing
far to near) onto a random textured background.

Categories (dense trainer format, P = num_points slots, see the micro-batch format of the trainer):
  param: P - J points sampled on the capsules, then all J joints; point_ids all -1 and
         canonical_points filled for every slot; all slots valid; 3D ground truth.
  kp3d:  the kept joints (about 10 % dropped, random order) with point_ids, then invalid filler
         points up to P; 3D ground truth; root_index = slot of the root joint or -1.
  dense: the joints, then a random number of capsule points (point_id -1) with 2D ground truth
         only, then filler.
  kp2d:  the kept joints with 2D ground truth only, then filler.
Rows of kp3d/dense/kp2d are built ragged (like the original loaders' `_ragged_` fields) and
densified with `geometry.ragged_to_dense`. Canonical points of joint slots are left at 0: the
trainer takes them from its (learnable) joint table via point_ids.

`make_demo_dataset` generates a fixed pool of examples per category once, then draws the examples
of step i by a stateless random draw from (seed, i), in graph, so a run resumed at step k sees
exactly the elements k, k + 1, ... of an uninterrupted run.
"""

import colorsys
import concurrent.futures
import dataclasses
import functools
import operator
import os

import numpy as np
import tensorflow as tf

from nlf_tf import geometry, joint_table
from nlf_tf import specs

CATEGORIES = ('param', 'kp3d', 'dense', 'kp2d')
SPEC_NAME = 'demo'

# The param category needs at least this many capsule points besides the joints.
MIN_SURFACE_POINTS = 8
# Fraction of joints dropped (annotation missing) in kp3d and kp2d examples.
JOINT_DROP_PROB = 0.1
CAMERA_DISTANCE_RANGE = (3.0, 8.0)  # metres, to the centre of the person's bounding box
FILL_RANGE = (0.7, 0.95)  # half-extent of the person relative to half the crop side
BODY_SCALE_RANGE = (0.9, 1.1)  # limb-length scale per person
BONE_JITTER_RANGE = (0.95, 1.05)  # extra per-bone length factor
TILT_STDDEV = np.deg2rad(8.0)  # global pitch and roll; yaw is uniform
MIN_RADIUS_PX = 1.0  # thinnest rendered capsule, so small crops still show every bone
# Pixels per vectorised rendering block (32 crops of 128 x 128): keeps the working set cache sized.
_RENDER_BLOCK_PIXELS = 32 * 128 * 128


# ----------------------------------------------------------------------------------------
# Skeleton
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class DemoSkeleton:
    """The demo skeleton as arrays. J joints, K bones."""
    names: tuple  # J joint names, in spec (= global joint table) order
    canonical: np.ndarray  # float32 [J, 3] T-pose positions, metres
    mirror: np.ndarray  # int32 [J]: index of the mirror partner (itself for centre joints)
    root: int  # index of the root joint
    bones: np.ndarray  # int32 [K, 2]: (proximal, distal) joint indices, parents before children
    bone_parent: np.ndarray  # int32 [K]: bone ending at this bone's proximal joint, -1 at the root
    radii: np.ndarray  # float32 [K] capsule radii, metres
    swing: np.ndarray  # float32 [K] amplitude of the random local rotation, radians
    colours: np.ndarray  # float32 [K, 3] RGB base colour (mirror symmetric)

    @property
    def num_joints(self):
        return len(self.names)

    @property
    def num_bones(self):
        return len(self.bones)


def _bone_colours(canonical, bones):
    """One saturated colour per class of bones with the same canonical midpoint up to the sign of x.

    Classes are ordered by that mirror-invariant key and spread around the hue circle by the golden
    ratio, so neighbouring bones get clearly different hues.
    """
    mid = 0.5 * (canonical[bones[:, 0]] + canonical[bones[:, 1]])
    keys = [tuple(np.round([abs(m[0]), m[1], m[2]], 6)) for m in mid]
    class_of_key = {key: i for i, key in enumerate(sorted(set(keys)))}
    hues = np.array([(class_of_key[key] * 0.618034) % 1.0 for key in keys])
    return np.array([colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues], np.float32)


def skeleton_from_spec(spec):
    """Builds and validates a DemoSkeleton from the parsed JSON spec (ValueError naming the field)."""
    names = spec.get('joint_names')
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError('spec field "joint_names" must be a non-empty list of strings')
    if len(set(names)) != len(names):
        raise ValueError('spec field "joint_names" contains duplicates')
    index = {name: i for i, name in enumerate(names)}

    positions = spec.get('canonical_positions')
    if not isinstance(positions, dict) or set(positions) != set(names):
        raise ValueError('spec field "canonical_positions" must map exactly the joint names to '
                         '[x, y, z]')
    canonical = np.array([positions[name] for name in names], np.float32)
    if canonical.shape != (len(names), 3) or not np.all(np.isfinite(canonical)):
        raise ValueError('spec field "canonical_positions" must hold finite [x, y, z] triples')

    mirror = np.arange(len(names), dtype=np.int32)
    derived_pairs = set()
    for i, name in enumerate(names):
        partner = joint_table.mirror_partner_name(name)
        if partner is None:
            if canonical[i, 0] != 0:
                raise ValueError(f'spec field "canonical_positions": centre joint {name!r} must '
                                 f'have x = 0')
            continue
        if partner not in index:
            raise ValueError(f'spec field "joint_names": {name!r} has no mirror partner '
                             f'{partner!r}')
        mirror[i] = index[partner]
        if name.startswith('l'):
            derived_pairs.add((name, partner))
        expected = canonical[index[partner]] * np.array([-1, 1, 1], np.float32)
        if not np.array_equal(canonical[i], expected):
            raise ValueError(f'spec field "canonical_positions": {name!r} and {partner!r} are not '
                             f'exact mirror images (x negated)')
    pairs = spec.get('mirror_pairs', [])
    if {tuple(p) for p in pairs} != derived_pairs:
        raise ValueError('spec field "mirror_pairs" must list exactly the (l..., r...) pairs given '
                         f'by the naming rule: {sorted(derived_pairs)}')

    root_name = spec.get('root_joint')
    if root_name not in index:
        raise ValueError(f'spec field "root_joint" must be a joint name, got {root_name!r}')
    root = index[root_name]

    bone_specs = spec.get('bones')
    if not isinstance(bone_specs, list) or not bone_specs:
        raise ValueError('spec field "bones" must be a non-empty list')
    bones, radii, swing, bone_parent = [], [], [], []
    bone_ending_at = {}  # joint index -> bone index
    for k, bone in enumerate(bone_specs):
        try:
            proximal, distal = (index[n] for n in bone['joints'])
            radius, swing_deg = float(bone['radius']), float(bone['swing_deg'])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f'spec field "bones"[{k}] must have "joints" [proximal, distal] '
                             f'(joint names), "radius" and "swing_deg": {e!r}') from e
        if proximal != root and proximal not in bone_ending_at:
            raise ValueError(f'spec field "bones"[{k}]: proximal joint {names[proximal]!r} must be '
                             f'the root or the distal joint of an earlier bone')
        if distal == root or distal in bone_ending_at:
            raise ValueError(f'spec field "bones"[{k}]: joint {names[distal]!r} already placed')
        if not radius > 0:
            raise ValueError(f'spec field "bones"[{k}]: radius must be positive')
        bone_parent.append(bone_ending_at.get(proximal, -1))
        bone_ending_at[distal] = k
        bones.append((proximal, distal))
        radii.append(radius)
        swing.append(np.deg2rad(swing_deg))
    if len(bone_ending_at) != len(names) - 1:
        missing = [n for i, n in enumerate(names) if i != root and i not in bone_ending_at]
        raise ValueError(f'spec field "bones" does not reach joints {missing}')

    bones = np.array(bones, np.int32)
    return DemoSkeleton(
        names=tuple(names), canonical=canonical, mirror=mirror, root=root, bones=bones,
        bone_parent=np.array(bone_parent, np.int32), radii=np.array(radii, np.float32),
        swing=np.array(swing, np.float32), colours=_bone_colours(canonical, bones))


@functools.lru_cache(maxsize=None)
def load_demo_skeleton():
    """The demo skeleton from `demo.json` (cached; treat the arrays as read-only)."""
    return skeleton_from_spec(specs.load_spec(SPEC_NAME))


def demo_joint_table():
    """(joint names list, canonical positions float32 [J, 3]): the global joint table of the demo."""
    skeleton = load_demo_skeleton()
    return list(skeleton.names), skeleton.canonical.copy()


# ----------------------------------------------------------------------------------------
# Posing and camera
# ----------------------------------------------------------------------------------------

def _axis_angle_to_matrix(rotvec):
    """Rodrigues' formula, [..., 3] rotation vectors -> [..., 3, 3] matrices (float64)."""
    rotvec = np.asarray(rotvec, np.float64)
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    axis = rotvec / np.maximum(angle, 1e-12)
    x, y, z = np.moveaxis(axis, -1, 0)
    zero = np.zeros_like(x)
    cross = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(axis.shape + (3,))
    sin, cos = np.sin(angle)[..., None], np.cos(angle)[..., None]
    return (np.eye(3) + sin * cross + (1 - cos) * (cross @ cross))


def _random_unit_vectors(rng, shape):
    v = rng.standard_normal(tuple(shape) + (3,))
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def sample_people(rng, num_people, skeleton=None):
    """Random posed people in a body-centred frame (root joint at the origin, y down).

    Forward kinematics: bone k has the global rotation G_k = G_parent(k) @ L_k (the root bones'
    parent is the person's global rotation) and its distal joint is placed at
    proximal + body_scale * jitter_k * G_k @ (c_distal - c_proximal), c being canonical positions.
    G_k is also the frame in which offsets from the bone move rigidly with it.

    Returns dict: joints float64 [n, J, 3] metres, bone_rotations float64 [n, K, 3, 3],
    body_scale float64 [n].
    """
    skeleton = skeleton or load_demo_skeleton()
    n, num_bones = num_people, skeleton.num_bones
    yaw = rng.uniform(-np.pi, np.pi, n)
    tilt = np.clip(rng.normal(0.0, TILT_STDDEV, (n, 2)), -3 * TILT_STDDEV, 3 * TILT_STDDEV)
    global_rot = (_axis_angle_to_matrix(yaw[:, None] * [0.0, 1.0, 0.0]) @
                  _axis_angle_to_matrix(tilt[:, :1] * [1.0, 0.0, 0.0]) @
                  _axis_angle_to_matrix(tilt[:, 1:] * [0.0, 0.0, 1.0]))
    body_scale = rng.uniform(*BODY_SCALE_RANGE, n)
    jitter = rng.uniform(*BONE_JITTER_RANGE, (n, num_bones))
    local_angles = skeleton.swing * rng.uniform(-1.0, 1.0, (n, num_bones))
    local_rot = _axis_angle_to_matrix(
        _random_unit_vectors(rng, (n, num_bones)) * local_angles[..., None])

    canonical = skeleton.canonical.astype(np.float64)
    joints = np.zeros((n, skeleton.num_joints, 3))
    bone_rot = np.zeros((n, num_bones, 3, 3))
    for k, (proximal, distal) in enumerate(skeleton.bones):
        parent = skeleton.bone_parent[k]
        parent_rot = global_rot if parent < 0 else bone_rot[:, parent]
        bone_rot[:, k] = parent_rot @ local_rot[:, k]
        rest = canonical[distal] - canonical[proximal]
        joints[:, distal] = joints[:, proximal] + (
            (body_scale * jitter[:, k])[:, None] * (bone_rot[:, k] @ rest))
    return dict(joints=joints, bone_rotations=bone_rot, body_scale=body_scale)


def place_in_camera(rng, joints, margin, proc_side):
    """Moves body-frame people into a camera frame and picks intrinsics so they fill the crop.

    The 3D bounding-box centre goes to a random distance on the optical axis; a lateral shift at
    that distance re-centres the projected bounding box (exact only at that depth, so "roughly").
    The focal length then scales the largest normalised half-extent (plus the capsule `margin`
    [n] in metres, seen at the nearest depth) to a random fill fraction of the half crop, and a
    random shift within the remaining slack moves the person around the crop.

    Returns (joints_cam float64 [n, J, 3], intrinsics float32 [n, 3, 3], focal float64 [n]).
    """
    n = joints.shape[0]
    distance = rng.uniform(*CAMERA_DISTANCE_RANGE, n)
    fill = rng.uniform(*FILL_RANGE, n)
    shift_fraction = rng.uniform(-0.8, 0.8, (n, 2))

    centre = 0.5 * (joints.min(axis=1) + joints.max(axis=1))
    cam = joints - centre[:, None]
    cam[..., 2] += distance[:, None]
    normalized = cam[..., :2] / cam[..., 2:]
    box_centre = 0.5 * (normalized.min(axis=1) + normalized.max(axis=1))
    cam[..., :2] -= box_centre[:, None] * distance[:, None, None]
    normalized = cam[..., :2] / cam[..., 2:]
    half_extent = (np.max(np.abs(normalized), axis=(1, 2)) +
                   margin / np.min(cam[..., 2], axis=1))
    half_side = 0.5 * proc_side
    focal = fill * half_side / half_extent
    # Slack left on each side in pixels, turned into a lateral move in metres at the box depth.
    slack_px = (1.0 - fill) * half_side
    cam[..., :2] += (shift_fraction * (slack_px / focal * distance)[:, None])[:, None]

    principal = (proc_side - 1) / 2
    intrinsics = np.zeros((n, 3, 3), np.float32)
    intrinsics[:, 0, 0] = intrinsics[:, 1, 1] = focal
    intrinsics[:, :2, 2] = principal
    intrinsics[:, 2, 2] = 1.0
    return cam, intrinsics, focal


def project(points_cam, intrinsics):
    """Pinhole projection of [n, M, 3] camera points with K [n, 3, 3] -> pixels [n, M, 2]."""
    intrinsics = intrinsics.astype(np.float64)
    normalized = points_cam[..., :2] / points_cam[..., 2:]
    return (normalized * intrinsics[:, None, [0, 1], [0, 1]] + intrinsics[:, None, :2, 2])


# ----------------------------------------------------------------------------------------
# Points on the capsules
# ----------------------------------------------------------------------------------------

def _perpendicular_basis(directions):
    """Two unit vectors orthogonal to each other and to each direction [K, 3] -> ([K,3], [K,3])."""
    d = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    helper = np.eye(3)[np.argmin(np.abs(d), axis=-1)]  # the axis least aligned with the bone
    e1 = np.cross(d, helper)
    e1 /= np.linalg.norm(e1, axis=-1, keepdims=True)
    return e1, np.cross(d, e1)


def sample_bone_points(rng, shape, skeleton=None):
    """Random points inside the skeleton's capsules, in canonical bone coordinates.

    A bone is chosen with probability proportional to its canonical length (so points are
    uniform along the skeleton), the fraction along it uniformly, and the offset uniformly over
    the disc of the bone's radius perpendicular to the canonical bone direction.

    Returns (bone_index int32 `shape`, fraction float64 `shape`, offset float64 `shape` + [3]).
    """
    skeleton = skeleton or load_demo_skeleton()
    canonical = skeleton.canonical.astype(np.float64)
    vectors = canonical[skeleton.bones[:, 1]] - canonical[skeleton.bones[:, 0]]
    lengths = np.linalg.norm(vectors, axis=-1)
    bone_index = rng.choice(skeleton.num_bones, size=shape, p=lengths / lengths.sum())
    fraction = rng.uniform(0.0, 1.0, shape)
    rho = skeleton.radii[bone_index] * np.sqrt(rng.uniform(0.0, 1.0, shape))
    phi = rng.uniform(0.0, 2 * np.pi, shape)
    e1, e2 = _perpendicular_basis(vectors)
    offset = rho[..., None] * (np.cos(phi)[..., None] * e1[bone_index] +
                               np.sin(phi)[..., None] * e2[bone_index])
    return bone_index.astype(np.int32), fraction, offset


def bone_point_positions(bone_index, fraction, offset, skeleton=None, joints=None,
                         bone_rotations=None, body_scale=None):
    """Canonical (and optionally posed) positions of points given in canonical bone coordinates.

    canonical = (1 - a) c_i + a c_j + offset            for bone (i, j), fraction a
    posed     = (1 - a) p_i + a p_j + s G_k @ offset     s: body scale, G_k: bone rotation
    The offset thus moves rigidly with its bone (and scales with the person like the capsule).

    bone_index, fraction: [n, M]; offset [n, M, 3]; joints [n, J, 3]; bone_rotations
    [n, K, 3, 3]; body_scale [n]. Returns canonical [n, M, 3] (and posed [n, M, 3] if joints given).
    """
    skeleton = skeleton or load_demo_skeleton()
    canonical_joints = skeleton.canonical.astype(np.float64)
    proximal, distal = skeleton.bones[bone_index, 0], skeleton.bones[bone_index, 1]
    a = fraction[..., None]
    canonical = (1 - a) * canonical_joints[proximal] + a * canonical_joints[distal] + offset
    if joints is None:
        return canonical
    batch = np.arange(joints.shape[0])[:, None]
    rotations = bone_rotations[batch, bone_index]  # [n, M, 3, 3]
    posed = ((1 - a) * joints[batch, proximal] + a * joints[batch, distal] +
             body_scale[:, None, None] * np.einsum('nmij,nmj->nmi', rotations, offset))
    return canonical, posed


def _filler_points(rng, shape, skeleton):
    """Random canonical points in the skeleton's bounding box grown by 0.1 m (never valid)."""
    low = skeleton.canonical.min(axis=0) - 0.1
    high = skeleton.canonical.max(axis=0) + 0.1
    return rng.uniform(low, high, tuple(shape) + (3,))


# ----------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------

def random_backgrounds(rng, num_images, side):
    """Muted textured backgrounds float32 [n, S, S, 3] in [0, 1]: a tinted grey, three random
    colour gratings and pixel noise (kept less saturated than the bone colours)."""
    n, num_waves = num_images, 3
    base = rng.uniform(0.15, 0.85, (n, 1, 1, 1)) + rng.uniform(-0.08, 0.08, (n, 1, 1, 3))
    angle = rng.uniform(0, np.pi, (n, num_waves, 1))
    wavelength = rng.uniform(4.0, max(side / 2, 5.0), (n, num_waves, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, num_waves, 1))
    colour = (rng.uniform(0.02, 0.12, (n, num_waves, 1)) *
              rng.uniform(0.5, 1.0, (n, num_waves, 3))).astype(np.float32)
    noise = rng.random((n, side, side, 3), dtype=np.float32)

    # sin(ku u + kv v + phase) = sin(A) cos(B) + cos(A) sin(B): separable, so only the final
    # products are image sized.
    grid = np.arange(side)
    arg_u = (2 * np.pi * np.cos(angle) / wavelength * grid + phase).astype(np.float32)
    arg_v = (2 * np.pi * np.sin(angle) / wavelength * grid).astype(np.float32)
    waves = (np.sin(arg_u)[:, :, None, :] * np.cos(arg_v)[:, :, :, None] +
             np.cos(arg_u)[:, :, None, :] * np.sin(arg_v)[:, :, :, None])
    image = np.matmul(waves.reshape(n, num_waves, -1).transpose(0, 2, 1), colour)
    image = image.reshape(n, side, side, 3)
    image += base.astype(np.float32) - 0.03
    image += 0.06 * noise  # uniform pixel noise in [-0.03, 0.03)
    return np.clip(image, 0.0, 1.0, out=image)


def _render_chunk(background, ends2d, ends_depth, ends_radius_px, radius_m, colours):
    """Composites capsules onto backgrounds with a per-pixel depth test (z-buffer).

    background [n, S, S, 3]; for K bones: ends2d [n, K, 2 ends, 2 (u, v)] pixels, ends_depth
    [n, K, 2] metres, ends_radius_px [n, K, 2], radius_m [n, K], colours [K, 3].
    Returns image float32 [n, S, S, 3] and bone_index int32 [n, S, S] (-1 = background).

    Bones are visited one at a time, each vectorised over the examples inside a window: the
    smallest rectangle (same size for all examples, placed per example inside the image) that
    holds every example's capsule bounding box. That is several times fewer pixels than testing
    every bone against the whole image.
    """
    f32 = np.float32
    n, side = background.shape[:2]
    zbuf = np.full((n, side, side), np.inf, f32)
    bone_index = np.full((n, side, side), -1, np.int32)
    shade = np.zeros((n, side, side), f32)
    for k in range(ends2d.shape[1]):
        start, end = ends2d[:, k, 0].astype(f32), ends2d[:, k, 1].astype(f32)  # [n, 2]
        r0, r1 = (ends_radius_px[:, k, i, None, None].astype(f32) for i in (0, 1))
        z0, z1 = (ends_depth[:, k, i, None, None].astype(f32) for i in (0, 1))

        reach = np.maximum(r0, r1)[:, 0]  # [n, 1]
        low = np.clip(np.ceil(np.minimum(start, end) - reach), 0, side - 1).astype(int)
        high = np.clip(np.floor(np.maximum(start, end) + reach), 0, side - 1).astype(int)
        size = np.max(high - low, axis=0) + 1  # window (width, height), same for all examples
        origin = np.minimum(low, side - size)  # keeps the window inside, covering [low, high]
        cols = origin[:, 0:1] + np.arange(size[0])  # [n, w] pixel u of the window columns
        rows = origin[:, 1:2] + np.arange(size[1])  # [n, h] pixel v of the window rows

        delta = end - start
        length2 = np.maximum(np.sum(delta ** 2, -1), f32(1e-6))[:, None, None]
        du = cols - start[:, 0:1]  # [n, w]: u - a_u
        dv = rows - start[:, 1:2]  # [n, h]: v - a_v
        # Window-sized arrays are [n, h, w]; separable terms are built by broadcasting.
        proj = (du * delta[:, 0:1])[:, None, :] + (dv * delta[:, 1:2])[:, :, None]
        t = np.clip(proj / length2, 0, 1)  # closest point on the segment: a + t d
        # |p - a - t d|^2 = |p - a|^2 - t (2 (p - a).d - t |d|^2)
        dist2 = (du ** 2)[:, None, :] + (dv ** 2)[:, :, None] - t * (2 * proj - t * length2)
        q = np.maximum(dist2, 0) / np.square(r0 + t * (r1 - r0))  # (distance / radius)^2
        inside = q <= 1
        bulge = np.sqrt(np.maximum(1 - q, 0))  # 1 on the capsule axis, 0 on its silhouette
        # Depth of the capsule surface facing the camera: axis depth minus the bulge.
        depth = z0 + t * (z1 - z0) - radius_m[:, k, None, None].astype(f32) * bulge

        example, wrow, wcol = np.nonzero(inside)
        prow, pcol = rows[example, wrow], cols[example, wcol]
        closer = depth[example, wrow, wcol] < zbuf[example, prow, pcol]
        example, wrow, wcol, prow, pcol = (
            x[closer] for x in (example, wrow, wcol, prow, pcol))
        zbuf[example, prow, pcol] = depth[example, wrow, wcol]
        bone_index[example, prow, pcol] = k
        # Darker at the proximal end (t = 0) and towards the silhouette.
        shade[example, prow, pcol] = ((0.4 + 0.6 * t[example, wrow, wcol]) *
                                      (0.6 + 0.4 * bulge[example, wrow, wcol]))

    covered = bone_index >= 0
    colour = colours[np.maximum(bone_index, 0)] * shade[..., None]
    image = np.where(covered[..., None], colour, background).astype(np.float32)
    return image, bone_index


def render_people(joints_cam, intrinsics, body_scale, proc_side, background_seed, skeleton=None,
                  image_dtype='float32', return_backgrounds=False):
    """Renders posed people (camera frame, metres) as capsules onto random backgrounds.

    Work is split into blocks of examples, rendered on a few threads (NumPy releases the GIL);
    each block draws its backgrounds from its own generator seeded by (background_seed, block
    start), so the result does not depend on the threading and peak memory stays per block.

    Returns image [n, S, S, 3] (float32 in [0, 1], or uint8 = round(255 x) if image_dtype is
    'uint8'), bone_index int32 [n, S, S] (-1 where the background shows) and, if requested, the
    float32 backgrounds [n, S, S, 3].
    """
    if image_dtype not in ('float32', 'uint8'):
        raise ValueError(f'image_dtype must be "float32" or "uint8", got {image_dtype!r}')
    skeleton = skeleton or load_demo_skeleton()
    n = joints_cam.shape[0]
    joints2d = project(joints_cam, intrinsics)
    focal = intrinsics[:, 0, 0].astype(np.float64)
    ends2d = joints2d[:, skeleton.bones]  # [n, K, 2, 2]
    ends_depth = joints_cam[:, skeleton.bones, 2]  # [n, K, 2]
    radius_m = body_scale[:, None] * skeleton.radii  # [n, K]
    ends_radius_px = np.maximum(
        focal[:, None, None] * radius_m[..., None] / ends_depth, MIN_RADIUS_PX)

    block = max(1, _RENDER_BLOCK_PIXELS // (proc_side * proc_side))

    def render(start):
        s = slice(start, min(start + block, n))
        rng = np.random.default_rng([background_seed, start])
        backgrounds = random_backgrounds(rng, s.stop - s.start, proc_side)
        image, bone_index = _render_chunk(backgrounds, ends2d[s], ends_depth[s],
                                          ends_radius_px[s], radius_m[s], skeleton.colours)
        if image_dtype == 'uint8':
            image = np.round(image * 255).astype(np.uint8)
        return image, bone_index, (backgrounds if return_backgrounds else None)

    starts = range(0, n, block)
    workers = max(1, min(4, os.cpu_count() or 1, len(starts)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(render, starts))
    side = proc_side
    empty = (np.zeros((0, side, side, 3), image_dtype), np.zeros((0, side, side), np.int32),
             np.zeros((0, side, side, 3), np.float32))
    num_results = 3 if return_backgrounds else 2
    return tuple(np.concatenate([p[i] for p in parts]) if parts else empty[i]
                 for i in range(num_results))


# ----------------------------------------------------------------------------------------
# Examples per category
# ----------------------------------------------------------------------------------------

def _ragged(values, row_lengths):
    return tf.RaggedTensor.from_row_lengths(values, tf.constant(row_lengths, tf.int64))


def _keep_joints(rng, num_examples, skeleton, drop_prob):
    """Random subsets of the joints, each in a random order (flat ragged rows).

    Returns (example index per kept joint, joint id per kept joint) flat in row order, the row
    lengths, and the root joint's slot per example (-1 if the root was dropped).
    """
    num_joints = skeleton.num_joints
    order = np.argsort(rng.uniform(size=(num_examples, num_joints)), axis=1)
    keep = rng.uniform(size=(num_examples, num_joints)) >= drop_prob
    rows, cols = np.nonzero(keep)
    joint_ids = order[rows, cols].astype(np.int32)
    lengths = keep.sum(axis=1)
    # The root's slot is the number of kept joints before it in its row.
    is_root = keep & (order == skeleton.root)
    slots = np.cumsum(keep, axis=1) - 1
    root_slot = np.where(is_root.any(axis=1), np.sum(np.where(is_root, slots, 0), axis=1), -1)
    return rows, joint_ids, lengths, root_slot.astype(np.int32)


def _validate_int(name, value, minimum, maximum=None):
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f'{name} must be an integer, got {value!r}')
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f'{name} must be an integer, got {value!r}') from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f'>= {minimum}' if maximum is None else f'in [{minimum}, {maximum}]'
        raise ValueError(f'{name} must be {bound}, got {value}')
    return value


def min_num_points():
    """Smallest valid num_points: every joint plus MIN_SURFACE_POINTS capsule points (param)."""
    return load_demo_skeleton().num_joints + MIN_SURFACE_POINTS


def generate_examples(category, num_examples, proc_side, num_points, seed,
                      image_dtype='float32', return_render_info=False):
    """`num_examples` demo examples of one category in the trainer's dense format (NumPy).

    Deterministic in (category, num_examples, proc_side, num_points, seed). Fields:
    image [n, S, S, 3] (float32 in [0, 1], or uint8 = round(255 x) with image_dtype='uint8'),
    intrinsics float32 [n, 3, 3], point_ids int32 [n, P], canonical_points float32 [n, P, 3],
    point_validity bool [n, P]; param/kp3d: coords3d_true float32 [n, P, 3], root_index int32
    [n]; dense/kp2d: coords2d_true float32 [n, P, 2].
    With return_render_info, also background float32 [n, S, S, 3] and bone_index int32 [n, S, S]
    (bone drawn at each pixel, -1 for background), for inspection and tests.
    """
    if category not in CATEGORIES:
        raise ValueError(f'category must be one of {CATEGORIES}, got {category!r}')
    n = _validate_int('num_examples', num_examples, 0)
    side = _validate_int('proc_side', proc_side, 8)
    seed = _validate_int('seed', seed, 0)
    skeleton = load_demo_skeleton()
    num_joints = skeleton.num_joints
    num_points = _validate_int('num_points', num_points, min_num_points())

    rng = np.random.default_rng([seed, CATEGORIES.index(category)])
    people = sample_people(rng, n, skeleton)
    margin = people['body_scale'] * skeleton.radii.max()
    joints_cam, intrinsics, _ = place_in_camera(rng, people['joints'], margin, side)
    # Offsets live in the bone frames, which do not change when moving into the camera frame
    # (only a translation), so the people's bone rotations stay valid.
    rendered = render_people(
        joints_cam, intrinsics, people['body_scale'], side, rng.integers(2 ** 63), skeleton,
        image_dtype=image_dtype, return_backgrounds=return_render_info)

    def capsule_points(shape):
        bones, fraction, offset = sample_bone_points(rng, shape, skeleton)
        return bone_point_positions(bones, fraction, offset, skeleton, joints_cam,
                                    people['bone_rotations'], people['body_scale'])

    out = dict(image=rendered[0], intrinsics=intrinsics)
    if category == 'param':
        # Capsule points, then every joint (like the original: surface/internal, then joints).
        num_surface = num_points - num_joints
        canonical, posed = capsule_points((n, num_surface))
        out['point_ids'] = np.full((n, num_points), -1, np.int32)
        out['canonical_points'] = np.concatenate(
            [canonical, np.broadcast_to(skeleton.canonical, (n, num_joints, 3))], 1)
        out['point_validity'] = np.ones((n, num_points), bool)
        out['coords3d_true'] = np.concatenate([posed, joints_cam], 1)
        out['root_index'] = np.full(n, num_surface + skeleton.root, np.int32)
    else:
        drop_prob = 0.0 if category == 'dense' else JOINT_DROP_PROB
        rows, joint_ids, num_kept, root_slot = _keep_joints(rng, n, skeleton, drop_prob)
        # Ragged rows: the joints go through point_ids (the trainer looks their canonical
        # positions up in its joint table); the example's own canonical points follow them.
        point_ids_rt = _ragged(joint_ids, num_kept)
        joint_slots_rt = _ragged(np.zeros((len(joint_ids), 3), np.float32), num_kept)
        if category == 'dense':
            max_extra = num_points - num_joints
            num_extra = rng.integers((max_extra + 1) // 2, max_extra + 1, n)
            canonical, posed = capsule_points((n, max_extra))
            extra_mask = np.arange(max_extra) < num_extra[:, None]
            extra_canonical = canonical[extra_mask]
            extra2d = project(posed, intrinsics)[extra_mask]
        else:
            num_extra = np.zeros(n, np.int64)
            extra_canonical = np.zeros((0, 3))
            extra2d = np.zeros((0, 2))
        num_filler = num_points - num_kept - num_extra
        filler = _filler_points(rng, (n, num_points), skeleton)
        filler = filler[np.arange(num_points) < num_filler[:, None]]
        own_canonical_rt = tf.concat([
            _ragged(extra_canonical.astype(np.float32), num_extra),
            _ragged(filler.astype(np.float32), num_filler)], axis=1)
        canonical_rt = tf.concat([joint_slots_rt, own_canonical_rt], axis=1)

        out['point_ids'] = geometry.ragged_to_dense(point_ids_rt, num_points, -1)[0].numpy()
        out['canonical_points'] = canonical_rt.to_tensor(shape=[None, num_points, 3]).numpy()
        joint_coords = joints_cam[rows, joint_ids]
        if category == 'kp3d':
            coords_rt = _ragged(joint_coords.astype(np.float32), num_kept)
            coords, validity = geometry.ragged_to_dense(coords_rt, num_points)
            out['point_validity'] = validity.numpy()
            out['coords3d_true'] = coords.numpy()
            out['root_index'] = root_slot
        else:
            joints2d = project(joint_coords[:, None], intrinsics[rows])[:, 0]
            coords_rt = tf.concat([
                _ragged(joints2d.astype(np.float32), num_kept),
                _ragged(extra2d.astype(np.float32), num_extra)], axis=1)
            coords, validity = geometry.ragged_to_dense(coords_rt, num_points)
            out['point_validity'] = validity.numpy()
            out['coords2d_true'] = coords.numpy()

    out = {k: (v.astype(np.float32) if v.dtype.kind == 'f' else v) for k, v in out.items()}
    if return_render_info:
        out['background'] = rendered[2]
        out['bone_index'] = rendered[1]
    return out


# ----------------------------------------------------------------------------------------
# tf.data pipeline
# ----------------------------------------------------------------------------------------

def _pool_indices(seed, step, category_index, batch_size, pool_size):
    """Which pool examples step `step` uses: a stateless draw without replacement from
    (seed, category, step). Philox is fixed explicitly so the draw is the same on every device."""
    key = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, category_index], tf.int64), step, alg='philox')
    scores = tf.random.stateless_uniform([pool_size], seed=key, alg='philox')
    return tf.argsort(scores, stable=True)[:batch_size]


def make_demo_dataset(proc_side, num_points, batch_sizes, seed, start_step=0, pool_size=512,
                      num_steps=None):
    """tf.data.Dataset of demo micro-batches, one element per step.

    Each element is {'param': {...}, 'kp3d': {...}, 'dense': {...}, 'kp2d': {...}} in the
    trainer's dense format, with `batch_sizes[category]` examples per category (0 allowed).
    A pool of `pool_size` examples per category is generated once (NumPy, from `seed`); step i
    draws its examples from the pool without replacement by a stateless draw from (seed, i), so
    the dataset starting at `start_step` = k yields exactly the elements k, k + 1, ... of the one
    starting at 0. `num_steps` is the (exclusive) final step, so a resumed run with the same
    value ends where the uninterrupted one does; None = infinite.
    Images are stored in the pool as uint8 (memory) and converted back to float32 in [0, 1].
    """
    proc_side = _validate_int('proc_side', proc_side, 8)
    num_points = _validate_int('num_points', num_points, min_num_points())
    seed = _validate_int('seed', seed, 0, 2 ** 63 - 1)
    pool_size = _validate_int('pool_size', pool_size, 1)
    start_step = _validate_int('start_step', start_step, 0)
    if num_steps is not None:
        num_steps = _validate_int('num_steps', num_steps, start_step)
    if not isinstance(batch_sizes, dict) or set(batch_sizes) != set(CATEGORIES):
        got = sorted(batch_sizes) if isinstance(batch_sizes, dict) else batch_sizes
        raise ValueError(f'batch_sizes must be a dict with exactly the keys {CATEGORIES}, '
                         f'got {got!r}')
    batch_sizes = {c: _validate_int(f'batch_sizes[{c!r}]', batch_sizes[c], 0, pool_size)
                   for c in CATEGORIES}

    pools = {}
    for category in CATEGORIES:
        examples = generate_examples(
            category, pool_size, proc_side, num_points, seed, image_dtype='uint8')
        pools[category] = {k: tf.constant(v) for k, v in examples.items()}

    def make_step(step):
        batch = {}
        for category_index, category in enumerate(CATEGORIES):
            indices = _pool_indices(
                seed, step, category_index, batch_sizes[category], pool_size)
            examples = {k: tf.gather(v, indices) for k, v in pools[category].items()}
            examples['image'] = tf.cast(examples['image'], tf.float32) / 255.0
            batch[category] = examples
        return batch

    end = np.iinfo(np.int64).max if num_steps is None else num_steps
    dataset = tf.data.Dataset.range(start_step, end)
    dataset = dataset.map(make_step, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
