"""Small synthetic SMPL / SMPL+H / SMPL-X body models in the official file layouts.

For tests and the demo (no licensed downloads): `write_synthetic_body_models(dir)` writes

    <dir>/smpl/SMPL_NEUTRAL.pkl, SMPL_MALE.pkl, SMPL_FEMALE.pkl   (plain pickle, protocol 2)
    <dir>/smplh/SMPLH_MALE.pkl, SMPLH_FEMALE.pkl                  (like MANO's SMPLH_male.pkl)
    <dir>/smplx/SMPLX_NEUTRAL.npz, SMPLX_MALE.npz, SMPLX_FEMALE.npz (SMPL-X v1.0 npz layout)
    <dir>/smpl/smpl_kid_template.npy, <dir>/smplx/smplx_kid_template.npy (AGORA-style kid templates)

which `nlf_tf.body_models.smpl_file.load_smpl_model` and `nlf_tf.body_models.files` read like
the real downloads. Keys: `v_template` [V, 3], `shapedirs` [V, 3, S] (SMPL, SMPL+H: 10 shape
components; SMPL-X: 10 shape then 10 expression columns, as in the v1.0 npz), `posedirs`
[V, 3, 9 (J - 1)], `J_regressor` [J, V] (a scipy.sparse csc_matrix in the pickles, dense in the
npz), `J` [J, 3] (pickles only), `weights` [V, J], `kintree_table` [2, J] (root parent stored as
2**32 - 1), `f` [F, 3]; SMPL pickles also `bs_style` 'lbs', `bs_type` 'lrotmin'; SMPL+H and
SMPL-X also `hands_meanl`, `hands_meanr` [45] (a slight finger curl) and
`hands_componentsl`, `hands_componentsr` [45, 45] (identity).

Geometry (model axes: metres, x = the person's left, y up, z forward; a T-pose with the pelvis
at the origin). The body is the demo skeleton of `data_specs/demo.json` (the stick figure of
`nlf_tf.demo_data`) dressed in tubes: every demo bone is a tube of rings around the bone axis,
exactly the vertices of `nlf_tf.data.synthetic.build_tube_mesh` for SMPL and SMPL-X (8 vertices
on each of 4 rings; the first 480 SMPL vertices and the first 720 SMPL faces equal those of
`nlf_tf.data.synthetic.build_smpl_model`, so DensePose points of the synthetic DensePose set
land on the same surface). SMPL+H uses a coarser body tube (6 vertices on 2 rings) so that its
pickle, whose `posedirs` has 459 columns per vertex coordinate, stays near 1 MB. Added parts,
all boxes (4-vertex rings): a foot per leg (heel to toe, the `*_foot` joint at the ball), per
hand a mitten (SMPL: wrist to fingertips, the `*_hand` joint at the knuckles) or a palm plus
five three-segment fingers (SMPL+H, SMPL-X: index, middle, ring, pinky side by side from the
knuckles, the thumb from the palm's front edge; joints 1-2-3 at the ring of each segment's
base), and for SMPL-X a jaw box (from the jaw joint to the chin) and an eye box per eye. Every
part is closed with flat end caps (a fan of triangles over the end ring, no extra vertices) and
oriented with outward normals, so each part bounds a volume (parts overlap where they meet,
like the capsules of the demo renderer). The neutral template is left/right symmetric: the
mirror image (x -> -x) of every vertex is a vertex.

Joints: `J_regressor` rows are affine combinations (non-negative, summing to 1) of a part's end
ring means, which lie on the part's axis, so each joint is regressed exactly at its intended
place on the axis (SMPL body joints as in `build_smpl_model`, e.g. 'spine1' 40 % up the pelvis
to spine bone). Skinning is rigid per ring (`weights` rows are one-hot), e.g. a finger ring at
joint 2 follows joint 2. Joint trees are the official ones (`PARENTS`, in the joint order of
`kinds.JOINT_NAMES`).

Blend shapes: shape components 0 (height: scale about the pelvis, +10 % per unit) and 1 (girth:
tube radii, +20 % of the radius per unit) as in `build_smpl_model`, then smaller ones (leg
length, arm length, shoulder width, hip width, head size, torso depth, two random per-part radius
changes, all mirror symmetric). SMPL-X expressions move only face vertices (upper head ring,
jaw) by a few millimetres. Pose blend shapes are small but nonzero: each vertex moves along its
radial direction by a random fixed pattern (a few mm) of the (R - I) entries of the joint it is
skinned to. Female = neutral + a short, narrow-shouldered, wide-hipped shape; male = neutral +
a tall, broad shape (both symmetric). Kid templates (same topology as the family's model): the
neutral template with 8 % thicker tubes, 9 % shorter legs, 3 % shorter arms and a deeper
torso, scaled by 0.6 about the pelvis, the head scaled only by 0.85 about the neck (a child's
proportions); no offset is added (the loaders centre kid templates on their vertex mean).

Face orientation: outward in the MODEL axes (y up), like the official files; the canonical
frame of `nlf_tf.canonical_space` negates y, which reverses the orientation there.

Storage decisions: `posedirs` is stored as float16 (the loaders convert to float64; the stored
values define the model), which keeps each file under 1.4 MB (SMPL+H, the largest); the npz
files are written compressed with fixed zip timestamps, and the pickles are deterministic, so
writing twice gives identical bytes. An existing file is kept if it is byte-identical or holds
the same arrays (another numpy/scipy may serialise them differently); otherwise
`write_synthetic_body_models` raises FileExistsError and never overwrites it. Files are written
to a temporary name and renamed into place.
"""

import io
import os
import pickle
import tempfile
import zipfile

import numpy as np
import scipy.sparse

from nlf_tf import specs
from nlf_tf.body_models import kinds, smpl_file

# Files written per kind, relative to the body-model folder (official names).
MODEL_FILES = {
    'smpl_f': os.path.join('smpl', 'SMPL_FEMALE.pkl'),
    'smpl_m': os.path.join('smpl', 'SMPL_MALE.pkl'),
    'smpl_n': os.path.join('smpl', 'SMPL_NEUTRAL.pkl'),
    'smplh_f': os.path.join('smplh', 'SMPLH_FEMALE.pkl'),
    'smplh_m': os.path.join('smplh', 'SMPLH_MALE.pkl'),
    'smplx_f': os.path.join('smplx', 'SMPLX_FEMALE.npz'),
    'smplx_m': os.path.join('smplx', 'SMPLX_MALE.npz'),
    'smplx_n': os.path.join('smplx', 'SMPLX_NEUTRAL.npz'),
}
KID_TEMPLATE_FILES = {
    'smpl': os.path.join('smpl', 'smpl_kid_template.npy'),
    'smplx': os.path.join('smplx', 'smplx_kid_template.npy'),
}
NUM_SHAPES = 10
NUM_EXPRESSIONS = 10
ROOT_PARENT = 2 ** 32 - 1  # how the official files store the root's parent

_SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19,
                 20, 21)


def _derived_parents(family):
    """Official parents by name: body as SMPL, finger k's parent is finger k-1 (finger 1's the
    wrist of its side), jaw and eyes hang from the head."""
    names = kinds.JOINT_NAMES[family]
    index = {name: i for i, name in enumerate(names)}
    parents = []
    for i, name in enumerate(names):
        if i < 22:
            parents.append(_SMPL_PARENTS[i])
        elif name in ('left_hand', 'right_hand'):
            parents.append(index[name.replace('hand', 'wrist')])
        elif name in ('jaw', 'left_eye_smplhf', 'right_eye_smplhf'):
            parents.append(index['head'])
        else:
            side, finger = name.split('_')
            k = int(finger[-1])
            parent = f'{side}_wrist' if k == 1 else f'{side}_{finger[:-1]}{k - 1}'
            parents.append(index[parent])
    return tuple(parents)


# Parent joint index per joint (-1 for the root), official trees in kinds.JOINT_NAMES order.
PARENTS = {family: _derived_parents(family) for family in kinds.FAMILIES}

# Body tube resolution per family: (ring fractions along each bone, vertices per ring). SMPL and
# SMPL-X use the rings of nlf_tf.data.synthetic (RING_FRACTIONS, RING_SIZE).
_FINE_BODY = ((0.0, 1 / 3, 2 / 3, 1.0), 8)
_BODY_RESOLUTION = {'smpl': _FINE_BODY, 'smplh': ((0.0, 1.0), 6), 'smplx': _FINE_BODY}

_FORWARD = np.array([0.0, 0.0, 1.0])
_DOWN = np.array([0.0, 1.0, 0.0])  # canonical (demo) frame: y down
_TO_MODEL = np.array([1.0, -1.0, 1.0])  # canonical (y down) -> model axes (y up)
_MIRROR = np.array([-1.0, 1.0, 1.0])

# Demo bone (left/centre) -> [(fraction along the bone, joint)]: a ring at fraction a is skinned
# to the joint of the last breakpoint <= a. Right bones by mirroring the names.
_BONE_SKIN = {
    ('pelv', 'spin'): [(0.0, 'pelvis'), (0.4, 'spine1')],
    ('spin', 'neck'): [(0.0, 'spine2'), (0.5, 'spine3')],
    ('neck', 'head'): [(0.0, 'neck'), (0.6, 'head')],
    ('pelv', 'lhip'): [(0.0, 'pelvis')],
    ('lhip', 'lkne'): [(0.0, 'left_hip')],
    ('lkne', 'lank'): [(0.0, 'left_knee')],
    ('neck', 'lsho'): [(0.0, 'left_collar')],
    ('lsho', 'lelb'): [(0.0, 'left_shoulder')],
    ('lelb', 'lwri'): [(0.0, 'left_elbow')],
}
# Body part group of each demo bone (for the shape components).
_BONE_GROUP = {
    ('pelv', 'spin'): 'torso', ('spin', 'neck'): 'torso', ('neck', 'head'): 'head',
    ('pelv', 'lhip'): 'hip', ('lhip', 'lkne'): 'leg', ('lkne', 'lank'): 'leg',
    ('neck', 'lsho'): 'collar', ('lsho', 'lelb'): 'arm', ('lelb', 'lwri'): 'arm',
}
# Body joint -> (demo bone, fraction along it): the places of nlf_tf.data.synthetic's SMPL model.
_BODY_JOINT_PLACES = {
    'pelvis': (('pelv', 'spin'), 0.0), 'left_hip': (('lhip', 'lkne'), 0.0),
    'spine1': (('pelv', 'spin'), 0.4), 'left_knee': (('lkne', 'lank'), 0.0),
    'spine2': (('pelv', 'spin'), 1.0), 'left_ankle': (('lkne', 'lank'), 1.0),
    'spine3': (('spin', 'neck'), 0.5), 'neck': (('spin', 'neck'), 1.0),
    'left_collar': (('neck', 'lsho'), 0.5), 'head': (('neck', 'head'), 0.6),
    'left_shoulder': (('lsho', 'lelb'), 0.0), 'left_elbow': (('lelb', 'lwri'), 0.0),
    'left_wrist': (('lelb', 'lwri'), 1.0),
}
# Fingers of the left hand (SMPL+H / SMPL-X), canonical frame relative to the left wrist joint:
# (base offset, direction, segment lengths j1->j2, j2->j3, j3->tip, half thickness, half width).
_KNUCKLE_X = 0.09
_FINGERS = {
    'index': ((_KNUCKLE_X, 0.0, 0.027), (1.0, 0.0, 0.0), (0.040, 0.025, 0.022), 0.0075, 0.0075),
    'middle': ((_KNUCKLE_X, 0.0, 0.009), (1.0, 0.0, 0.0), (0.044, 0.028, 0.024), 0.0075, 0.0075),
    'pinky': ((_KNUCKLE_X, 0.0, -0.027), (1.0, 0.0, 0.0), (0.032, 0.020, 0.018), 0.0070, 0.0070),
    'ring': ((_KNUCKLE_X, 0.0, -0.009), (1.0, 0.0, 0.0), (0.040, 0.026, 0.022), 0.0075, 0.0075),
    'thumb': ((0.015, 0.0, 0.030), (1.0, 0.0, 1.0), (0.035, 0.030, 0.027), 0.0090, 0.0090),
}
_PALM_HALF = (0.013, 0.042)  # half thickness (y), half width (z)
_HAND_MEAN_CURL = (0.12, 0.15, 0.10)  # radians per finger segment (slightly curled hand)

# Shape coefficients turning the neutral template into the gendered ones (components: height,
# girth, leg length, arm length, shoulder width, hip width, head size, torso depth, random,
# random).
_GENDER_BETAS = {
    'n': np.zeros(NUM_SHAPES),
    'f': np.array([-0.5, -0.25, -0.2, -0.3, -1.0, 1.0, -0.2, 0.0, 0.0, 0.0]),
    'm': np.array([0.5, 0.3, 0.2, 0.3, 1.0, -0.5, 0.2, 0.3, 0.0, 0.0]),
}

# Joint-angle ranges (radians, model axes) of `pose_for_demo`: name -> ((lo, hi) per axis x, y,
# z). Left side given; the right side mirrors it (x kept, y and z negated). Unlisted joints
# get +-0.1 on every axis.
_POSE_RANGES = {
    'pelvis': ((0.0, 0.0),) * 3,
    'left_hip': ((-0.9, 0.3), (-0.3, 0.3), (-0.1, 0.5)),
    'left_knee': ((0.0, 1.4), (-0.05, 0.05), (-0.05, 0.05)),
    'left_ankle': ((-0.3, 0.3), (-0.2, 0.2), (-0.2, 0.2)),
    'left_foot': ((-0.2, 0.2), (-0.1, 0.1), (-0.1, 0.1)),
    'spine1': ((-0.25, 0.25), (-0.2, 0.2), (-0.15, 0.15)),
    'spine2': ((-0.2, 0.2), (-0.2, 0.2), (-0.15, 0.15)),
    'spine3': ((-0.2, 0.2), (-0.2, 0.2), (-0.15, 0.15)),
    'neck': ((-0.3, 0.3), (-0.3, 0.3), (-0.2, 0.2)),
    'head': ((-0.3, 0.3), (-0.4, 0.4), (-0.2, 0.2)),
    'left_collar': ((-0.15, 0.15), (-0.15, 0.15), (-0.15, 0.15)),
    'left_shoulder': ((-0.3, 0.3), (-0.5, 0.5), (-1.3, 0.3)),
    'left_elbow': ((-0.1, 0.1), (-1.6, 0.0), (-0.1, 0.1)),
    'left_wrist': ((-0.4, 0.4), (-0.4, 0.4), (-0.4, 0.4)),
    'left_hand': ((-0.3, 0.3), (-0.2, 0.2), (-0.3, 0.3)),
    'jaw': ((0.0, 0.3), (-0.05, 0.05), (-0.05, 0.05)),
    'left_eye_smplhf': ((-0.2, 0.2), (-0.2, 0.2), (0.0, 0.0)),
    'right_eye_smplhf': ((-0.2, 0.2), (-0.2, 0.2), (0.0, 0.0)),
}
# Fingers of the left hand curl about -z (towards the palm, which faces down in the T-pose).
for _finger in ('index', 'middle', 'pinky', 'ring'):
    for _k in (1, 2, 3):
        _POSE_RANGES[f'left_{_finger}{_k}'] = ((-0.05, 0.05), (-0.15, 0.15) if _k == 1
                                               else (-0.02, 0.02), (-1.0, 0.05))
for _k in (1, 2, 3):
    _POSE_RANGES[f'left_thumb{_k}'] = ((-0.3, 0.3), (-0.3, 0.3), (-0.4, 0.1))


# ----------------------------------------------------------------------------------------------
# Parts

class _Part:
    """A straight box or tube: rings of `ring_size` vertices at `fractions` from start to end."""

    def __init__(self, name, start, end, fractions, ring_size, radius_u, radius_w, skin,
                 group, phase=0.0, mirror_key=None):
        self.name = name
        self.start = np.asarray(start, np.float64)
        self.end = np.asarray(end, np.float64)
        self.fractions = tuple(float(a) for a in fractions)
        self.ring_size = ring_size
        self.radius_u, self.radius_w = float(radius_u), float(radius_w)
        self.skin = tuple(skin)  # joint name per ring
        self.group = group
        self.phase = phase
        self.mirror_key = mirror_key or name  # same for a left part and its right partner
        if len(self.skin) != len(self.fractions):
            raise ValueError(f'part {name}: one skinning joint per ring expected')

    def mirrored(self):
        return _Part(_mirror_name(self.name), self.start * _MIRROR, self.end * _MIRROR,
                     self.fractions, self.ring_size, self.radius_u, self.radius_w,
                     [_mirror_name(j) for j in self.skin], self.group, self.phase,
                     self.mirror_key)

    def frame(self):
        """(u, w): unit vectors across the axis (u = the 'radius_u' direction)."""
        d = self.end - self.start
        if d[2] == 0:
            # Same construction as nlf_tf.data.synthetic.build_tube_mesh (bit for bit).
            side = np.cross(d, _FORWARD)
            side /= np.linalg.norm(side)
            return side, _FORWARD
        axis = d / np.linalg.norm(d)
        ref = _FORWARD if np.linalg.norm(np.cross(axis, _FORWARD)) >= 0.5 else _DOWN
        u = np.cross(axis, ref)
        u /= np.linalg.norm(u)
        return u, np.cross(u, axis)

    def vertices(self):
        """(ring vertices [R * m, 3], radial offsets [R * m, 3]) in the canonical frame."""
        u, w = self.frame()
        angles = self.phase + 2 * np.pi * np.arange(self.ring_size) / self.ring_size
        verts, offsets = [], []
        for a in self.fractions:
            for phi in angles:
                if self.radius_u == self.radius_w:
                    offset = self.radius_u * (np.cos(phi) * u + np.sin(phi) * w)
                else:
                    offset = np.cos(phi) * self.radius_u * u + np.sin(phi) * self.radius_w * w
                verts.append((1 - a) * self.start + a * self.end + offset)
                offsets.append(offset)
        return np.array(verts), np.array(offsets)

    def side_faces(self, base):
        """Tube wall triangles (same order as build_tube_mesh: front half, then back half)."""
        m, half = self.ring_size, self.ring_size // 2
        faces = []
        for h in range(2):
            for r in range(len(self.fractions) - 1):
                for cc in range(half):
                    def vid(rr, c):
                        return base + rr * m + (h * half + c) % m
                    faces.append([vid(r, cc), vid(r, cc + 1), vid(r + 1, cc + 1)])
                    faces.append([vid(r, cc), vid(r + 1, cc + 1), vid(r + 1, cc)])
        return faces

    def cap_faces(self, base):
        """Fans over the first and last rings, wound opposite to the walls they close."""
        m = self.ring_size
        first, last = base, base + (len(self.fractions) - 1) * m
        faces = [[first, first + k + 1, first + k] for k in range(1, m - 1)]
        faces += [[last, last + k, last + k + 1] for k in range(1, m - 1)]
        return faces


def _mirror_name(name):
    for a, b in (('left_', 'right_'), ('right_', 'left_')):
        if name.startswith(a):
            return b + name[len(a):]
    return name


def _mirror_demo(name):
    """Mirror partner of a demo joint name ('lhip' <-> 'rhip'; centre joints unchanged)."""
    if name[0] in 'lr':
        return {'l': 'r', 'r': 'l'}[name[0]] + name[1:]
    return name


def _demo_skeleton():
    """(names, canonical float64 [J, 3], bones [(i, j)], radii) of data_specs/demo.json, with the
    float32 rounding of nlf_tf.demo_data (so the tubes equal build_tube_mesh's)."""
    spec = specs.load_spec('demo')
    names = list(spec['joint_names'])
    canonical = np.array([spec['canonical_positions'][n] for n in names],
                         np.float32).astype(np.float64)
    index = {n: i for i, n in enumerate(names)}
    bones = [(index[b['joints'][0]], index[b['joints'][1]]) for b in spec['bones']]
    radii = [float(np.float32(b['radius'])) for b in spec['bones']]
    return names, canonical, bones, radii


def _box(name, start, end, fractions, half_u, half_w, skin, group):
    # Corners at +-half_u, +-half_w: a 4-vertex ring at 45 degrees with radii scaled by sqrt 2.
    return _Part(name, start, end, fractions, 4, np.sqrt(2) * half_u, np.sqrt(2) * half_w,
                 skin, group, phase=np.pi / 4)


def _build_parts(family):
    """(parts, joint places {joint name: (part name, fraction)}) of a family."""
    names, c, bones, radii = _demo_skeleton()
    index = {n: i for i, n in enumerate(names)}
    fractions, ring_size = _BODY_RESOLUTION[family]
    parts, places = [], {}
    bone_part = {}
    for k, (i, j) in enumerate(bones):
        key = (names[i], names[j])
        left_key = tuple(_mirror_demo(n) for n in key) if names[j].startswith('r') else key
        mirror = left_key != key
        breakpoints = _BONE_SKIN[left_key]
        skin = []
        for a in fractions:
            joint = [jn for bp, jn in breakpoints if bp <= a + 1e-9][-1]
            skin.append(_mirror_name(joint) if mirror else joint)
        name = f'bone_{key[0]}_{key[1]}'
        parts.append(_Part(name, c[i], c[j], fractions, ring_size, radii[k], radii[k], skin,
                           _BONE_GROUP[left_key], mirror_key=f'bone_{left_key[0]}_{left_key[1]}'))
        bone_part[key] = name
    for joint, (bone, a) in _BODY_JOINT_PLACES.items():
        places[joint] = (bone_part[bone], a)
        if joint.startswith('left_'):
            places[_mirror_name(joint)] = (bone_part[tuple(_mirror_demo(n) for n in bone)], a)

    left_extras = []
    # Foot: heel 5 cm behind the ankle, ball (foot joint) 13 cm and toe 19 cm in front.
    ankle = c[index['lank']]
    heel, toe = ankle + [0, 0, -0.05], ankle + [0, 0, 0.19]
    ball = 0.18 / 0.24
    left_extras.append(_box('left_foot_part', heel, toe, (0.0, ball, 1.0), 0.045, 0.03,
                            ('left_ankle', 'left_foot', 'left_foot'), 'leg'))
    places['left_foot'] = ('left_foot_part', ball)

    wrist = c[index['lwri']]
    if family == 'smpl':
        # Mitten from 1 cm inside the forearm to the fingertips; hand joint at the knuckles.
        start, end = wrist + [-0.01, 0, 0], wrist + [0.18, 0, 0]
        knuckles = 0.09 / 0.19
        left_extras.append(_box('left_hand_part', start, end, (0.0, knuckles, 1.0),
                                _PALM_HALF[0], _PALM_HALF[1],
                                ('left_wrist', 'left_hand', 'left_hand'), 'arm'))
        places['left_hand'] = ('left_hand_part', knuckles)
    else:
        left_extras.append(_box('left_palm', wrist + [-0.01, 0, 0], wrist + [_KNUCKLE_X, 0, 0],
                                (0.0, 1.0), _PALM_HALF[0], _PALM_HALF[1],
                                ('left_wrist', 'left_wrist'), 'arm'))
        for finger, (base, direction, lengths, half_u, half_w) in _FINGERS.items():
            direction = np.asarray(direction, np.float64)
            direction /= np.linalg.norm(direction)
            start = wrist + base
            total = sum(lengths)
            ring_at = np.cumsum((0.0,) + lengths) / total
            joints = [f'left_{finger}{k}' for k in (1, 2, 3)]
            left_extras.append(_box(f'left_{finger}_part', start, start + total * direction,
                                    ring_at, half_u, half_w, joints + joints[-1:], 'arm'))
            for k, joint in enumerate(joints):
                places[joint] = (f'left_{finger}_part', ring_at[k])

    centre_extras = []
    if family == 'smplx':
        jaw, chin = np.array([0.0, -0.60, 0.015]), np.array([0.0, -0.565, 0.095])
        centre_extras.append(_box('jaw_part', jaw, chin, (0.0, 1.0), 0.038, 0.012,
                                  ('jaw', 'jaw'), 'face'))
        places['jaw'] = ('jaw_part', 0.0)
        eye = np.array([0.032, -0.675, 0.078])
        left_extras.append(_box('left_eye_part', eye - [0, 0, 0.012], eye + [0, 0, 0.012],
                                (0.0, 1.0), 0.011, 0.009,
                                ('left_eye_smplhf', 'left_eye_smplhf'), 'eye'))
        places['left_eye_smplhf'] = ('left_eye_part', 0.5)
        places['right_eye_smplhf'] = ('right_eye_part', 0.5)

    for part in left_extras:
        parts += [part, part.mirrored()]
    parts += centre_extras
    for joint in list(places):
        if joint.startswith('left_') and _mirror_name(joint) not in places:
            part, a = places[joint]
            places[_mirror_name(joint)] = (_mirror_name(part), a)
    missing = set(kinds.JOINT_NAMES[family]) - set(places)
    if missing:
        raise AssertionError(f'no place for joints {sorted(missing)}')
    return parts, places


# ----------------------------------------------------------------------------------------------
# Model arrays

def _mesh(family):
    """The neutral mesh of a family: dict of vertices (model axes), faces, per-vertex part info,
    regressor and weights."""
    parts, places = _build_parts(family)
    joint_names = kinds.JOINT_NAMES[family]
    joint_index = {n: i for i, n in enumerate(joint_names)}
    verts, offsets, part_of_vertex, ring_frac, side_faces, caps = [], [], [], [], [], []
    weights_rows, part_base = [], {}
    base = 0
    for p, part in enumerate(parts):
        v, o = part.vertices()
        part_base[part.name] = base
        verts.append(v)
        offsets.append(o)
        part_of_vertex += [p] * len(v)
        ring_frac += [a for a in part.fractions for _ in range(part.ring_size)]
        for joint in part.skin:
            weights_rows += [joint_index[joint]] * part.ring_size
        part_faces = part.side_faces(base), part.cap_faces(base)
        # Orient each closed part outwards in MODEL axes (the y flip below mirrors the
        # canonical frame, which reverses orientation).
        closed = np.array(part_faces[0] + part_faces[1])
        if _signed_volume(v * _TO_MODEL, closed - base) < 0:
            part_faces = tuple([[f[0], f[2], f[1]] for f in fs] for fs in part_faces)
        side_faces += part_faces[0]
        caps += part_faces[1]
        base += len(v)

    vertices = np.concatenate(verts) * _TO_MODEL
    offsets = np.concatenate(offsets) * _TO_MODEL
    n_verts, n_joints = len(vertices), len(joint_names)
    weights = np.zeros([n_verts, n_joints])
    weights[np.arange(n_verts), weights_rows] = 1.0

    regressor = np.zeros([n_joints, n_verts])
    part_by_name = {part.name: part for part in parts}
    for joint, (part_name, a) in places.items():
        if joint not in joint_index:
            continue
        part = part_by_name[part_name]
        m = part.ring_size
        first = part_base[part_name]
        last = first + (len(part.fractions) - 1) * m
        # Ring means lie on the axis; (1 - a) first + a last is the axis point at fraction a.
        row = joint_index[joint]
        regressor[row, first:first + m] += (1 - a) / m
        regressor[row, last:last + m] += a / m

    return dict(vertices=vertices, offsets=offsets, faces=np.array(side_faces + caps, np.int64),
                part_of_vertex=np.array(part_of_vertex), ring_fraction=np.array(ring_frac),
                parts=parts, regressor=regressor, weights=weights)


def _signed_volume(vertices, faces):
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return float(np.einsum('ij,ij->i', a, np.cross(b, c)).sum() / 6)


def _unit(x):
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def _shapedirs(mesh, rng):
    """[V, 3, 10] shape components on the neutral mesh (model axes)."""
    v, off = mesh['vertices'], mesh['offsets']
    parts = mesh['parts']
    group = np.array([parts[p].group for p in mesh['part_of_vertex']])
    joints = mesh['regressor'] @ v
    names = mesh['joint_names']
    pelvis = joints[0]
    sign_x = np.sign(v[:, 0])
    dirs = np.zeros([len(v), 3, NUM_SHAPES])
    dirs[:, :, 0] = 0.1 * (v - pelvis)  # height: scale about the pelvis
    dirs[:, :, 1] = 0.2 * off  # girth: tube radii
    leg = group == 'leg'
    hip_y = joints[names.index('left_hip'), 1]
    dirs[leg, 1, 2] = 0.06 * (v[leg, 1] - hip_y)  # leg length (y up: ankles move down)
    arm = group == 'arm'
    shoulder_x = joints[names.index('left_shoulder'), 0]
    dirs[arm, 0, 3] = 0.06 * (v[arm, 0] - sign_x[arm] * shoulder_x)  # arm length
    collar = group == 'collar'
    dirs[arm, 0, 4] = 0.02 * sign_x[arm]  # shoulder width (collar tubes stretch)
    dirs[collar, 0, 4] = 0.02 * v[collar, 0] / shoulder_x
    hip = group == 'hip'
    hip_x = joints[names.index('left_hip'), 0]
    dirs[leg, 0, 5] = 0.015 * sign_x[leg]  # hip width
    dirs[hip, 0, 5] = 0.015 * v[hip, 0] / hip_x
    head = np.isin(group, ('head', 'face', 'eye'))
    neck = joints[names.index('neck')]
    dirs[head, :, 6] = 0.05 * (v[head] - neck)  # head size
    torso = group == 'torso'
    # Torso depth (radial, so ring means and with them the joints stay in place).
    dirs[torso, 2, 7] = 0.15 * off[torso, 2]
    # Two random per-part radius changes, equal for mirror partner parts (symmetric).
    keys = sorted({part.mirror_key for part in parts})
    for k in (8, 9):
        scale = dict(zip(keys, rng.normal(0.0, 0.05, len(keys))))
        per_vertex = np.array([scale[parts[p].mirror_key] for p in mesh['part_of_vertex']])
        dirs[:, :, k] = per_vertex[:, None] * off
    return dirs


def _exprdirs(mesh, rng):
    """[V, 3, 10] expression components: millimetres on the face (upper head rings and jaw)."""
    v, off = mesh['vertices'], mesh['offsets']
    parts = mesh['parts']
    group = np.array([parts[p].group for p in mesh['part_of_vertex']])
    jaw = group == 'face'
    face = jaw | ((group == 'head') & (mesh['ring_fraction'] >= 0.5))
    dirs = np.zeros([len(v), 3, NUM_EXPRESSIONS])
    dirs[jaw, 1, 0] = -0.008  # mouth opens: the jaw moves down
    dirs[jaw, 2, 1] = 0.005  # chin forward
    front = face & ~jaw & (off[:, 2] > 0)
    dirs[front, 0, 2] = 0.004 * np.sign(v[front, 0])  # smile: the cheeks widen
    n_face = int(np.count_nonzero(face))
    for k in range(3, NUM_EXPRESSIONS):
        dirs[face, :, k] = rng.normal(0.0, 0.002, [n_face, 3])
    return dirs


def _posedirs(mesh, rng):
    """[V, 3, 9 (J - 1)]: each vertex moves along its radial direction by a fixed random pattern
    (a few mm per unit) of the (R - I) entries of the joint it is skinned to (none at the root)."""
    n_verts, n_joints = mesh['weights'].shape
    patterns = rng.normal(0.0, 0.003, [n_joints, 9])
    normals = _unit(mesh['offsets'])
    dirs = np.zeros([n_verts, 3, 9 * (n_joints - 1)])
    skin = np.argmax(mesh['weights'], axis=1)
    for j in range(1, n_joints):
        rows = np.flatnonzero(skin == j)
        dirs[rows, :, 9 * (j - 1):9 * j] = normals[rows, :, None] * patterns[j][None, None, :]
    return dirs


def _hand_means():
    """(left [45], right [45]): a slight curl of every finger (left about -z, towards the palm;
    the right hand is the mirror image, i.e. rotation vectors (x, -y, -z))."""
    left = []
    for finger in ('index', 'middle', 'pinky', 'ring', 'thumb'):
        for k in range(3):
            curl = _HAND_MEAN_CURL[k] * (0.5 if finger == 'thumb' else 1.0)
            left.append((0.0, 0.0, -curl))
    left = np.array(left).reshape(-1)
    right = (np.array(left).reshape(15, 3) * [1.0, -1.0, -1.0]).reshape(-1)
    return left, right


def _family_model(family, seed):
    """Neutral-mesh arrays shared by the genders of a family (deterministic in seed)."""
    mesh = _mesh(family)
    mesh['joint_names'] = list(kinds.JOINT_NAMES[family])
    rng = np.random.default_rng([seed, kinds.FAMILIES.index(family)])
    mesh['shapedirs'] = _shapedirs(mesh, rng)
    mesh['exprdirs'] = _exprdirs(mesh, rng) if family == 'smplx' else None
    mesh['posedirs'] = _posedirs(mesh, rng)
    return mesh


def build_body_model(family, gender, seed=0):
    """The arrays of one synthetic model file (the dict that is pickled / saved), see the module
    docstring. gender: 'female'|'male'|'neutral' or 'f'|'m'|'n'."""
    kind = kinds.kind_name(family, gender)
    return _file_dict(kind, _family_model(family, seed))


def _file_dict(kind, mesh):
    family, g = kind.rsplit('_', 1)
    v_template = mesh['vertices'] + mesh['shapedirs'] @ _GENDER_BETAS[g]
    parents = np.array(PARENTS[family], np.int64)
    parents[0] = ROOT_PARENT
    kintree = np.stack([parents, np.arange(len(parents), dtype=np.int64)])
    posedirs = mesh['posedirs'].astype(np.float16)
    if family == 'smplx':
        out = dict(
            v_template=v_template,
            shapedirs=np.concatenate([mesh['shapedirs'], mesh['exprdirs']], axis=2),
            posedirs=posedirs, J_regressor=mesh['regressor'].copy(),
            weights=mesh['weights'].copy(), kintree_table=kintree,
            f=mesh['faces'].astype(np.int32))
    else:
        out = dict(
            J_regressor=scipy.sparse.csc_matrix(mesh['regressor']),
            f=mesh['faces'].astype(np.uint32), kintree_table=kintree,
            J=mesh['regressor'] @ v_template, weights=mesh['weights'].copy(),
            posedirs=posedirs, bs_style='lbs', v_template=v_template,
            shapedirs=mesh['shapedirs'].copy(), bs_type='lrotmin')
    if family in ('smplh', 'smplx'):
        left, right = _hand_means()
        out.update(hands_meanl=left, hands_meanr=right, hands_componentsl=np.eye(45),
                   hands_componentsr=np.eye(45))
    return out


def build_kid_template(family, seed=0):
    """float64 [V, 3] kid template in the family's topology (see the module docstring)."""
    mesh = _family_model(family, seed)
    return _kid_template(mesh)


def _kid_template(mesh):
    names = mesh['joint_names']
    parts = mesh['parts']
    group = np.array([parts[p].group for p in mesh['part_of_vertex']])
    shaped = mesh['vertices'] + mesh['shapedirs'] @ np.array(
        [0.0, 0.4, -1.5, -0.5, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0])
    joints = mesh['regressor'] @ shaped
    pelvis, neck = joints[0], joints[names.index('neck')]
    kid = pelvis + 0.6 * (shaped - pelvis)
    head = np.isin(group, ('head', 'face', 'eye'))
    kid_neck = pelvis + 0.6 * (neck - pelvis)
    kid[head] = kid_neck + 0.85 * (shaped[head] - neck)
    return kid


# ----------------------------------------------------------------------------------------------
# Poses

def pose_for_demo(rng, family):
    """A plausible random pose, float32 [3 J] axis-angle (model axes, parent-relative): moderate
    joint angles (knees and elbows bend the right way, fingers curl towards the palm), the
    global orientation (joint 0) zero for the caller to set. rng: a numpy Generator or a seed."""
    if family not in kinds.FAMILIES:
        raise ValueError(f'unknown body-model family {family!r}; known: '
                         f'{", ".join(kinds.FAMILIES)}')
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    names = kinds.JOINT_NAMES[family]
    lo, hi = np.full([len(names), 3], -0.1), np.full([len(names), 3], 0.1)
    for i, name in enumerate(names):
        if name in _POSE_RANGES:
            ranges = np.array(_POSE_RANGES[name], np.float64)
        elif name.startswith('right_') and _mirror_name(name) in _POSE_RANGES:
            # Mirror of the left range: x kept, y and z negated (and their bounds swapped).
            left = np.array(_POSE_RANGES[_mirror_name(name)], np.float64)
            ranges = left.copy()
            ranges[1:] = -left[1:, ::-1]
        else:
            continue
        lo[i], hi[i] = ranges[:, 0], ranges[:, 1]
    pose = rng.uniform(lo, hi)
    pose[0] = 0.0
    return pose.reshape(-1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Writing

def _pickle_bytes(data):
    return pickle.dumps(data, protocol=2)


def _npz_bytes(arrays):
    """A compressed .npz with fixed member timestamps (the same bytes for the same arrays)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f'{key}.npy', date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return out.getvalue()


def _npy_bytes(array):
    out = io.BytesIO()
    np.lib.format.write_array(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def _same_content(existing, candidate):
    """Whether two files of one of our kinds hold the same arrays (for files serialised by another
    numpy/scipy version); False if either cannot be read."""
    try:
        if existing.endswith('.npy'):
            a, b = np.load(existing, allow_pickle=False), np.load(candidate, allow_pickle=False)
            return a.shape == b.shape and np.array_equal(a, b)
        a, b = smpl_file.load_smpl_model(existing), smpl_file.load_smpl_model(candidate)
    except (OSError, ValueError):
        return False
    return a.keys() == b.keys() and all(
        np.shape(a[k]) == np.shape(b[k]) and np.array_equal(a[k], b[k]) for k in a)


def _write_file(path, data):
    """Writes bytes atomically; keeps an identical existing file; FileExistsError otherwise."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(path):
        with open(path, 'rb') as f:
            if f.read() == data:
                return 'kept'
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.',
                               suffix='.tmp' + os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        if os.path.exists(path):
            if _same_content(path, tmp):
                return 'kept'
            raise FileExistsError(
                f'{path}: exists and differs from the synthetic body model that would be '
                f'written here; refusing to overwrite it (use another body-model folder or '
                f'remove the file)')
        os.replace(tmp, path)
        tmp = None
        return 'written'
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def write_synthetic_body_models(body_model_dir, families=kinds.FAMILIES, seed=0):
    """Writes the synthetic model files of `families` (and the SMPL / SMPL-X kid templates) under
    `body_model_dir` in the official layout; returns {kind: path} of the model files. Existing
    identical files are kept; an existing different file raises FileExistsError (nothing of a
    user's is ever overwritten)."""
    body_model_dir = os.fspath(body_model_dir)
    families = tuple(families)
    unknown = [f for f in families if f not in kinds.FAMILIES]
    if unknown:
        raise ValueError(f'families: unknown {unknown}; known: {", ".join(kinds.FAMILIES)}')
    paths = {}
    for family in kinds.FAMILIES:
        if family not in families:
            continue
        mesh = _family_model(family, seed)
        for g in kinds.FAMILY_GENDERS[family]:
            kind = f'{family}_{g}'
            path = os.path.join(body_model_dir, MODEL_FILES[kind])
            data = _file_dict(kind, mesh)
            _write_file(path, _npz_bytes(data) if path.endswith('.npz') else _pickle_bytes(data))
            paths[kind] = path
        if family in KID_TEMPLATE_FILES:
            _write_file(os.path.join(body_model_dir, KID_TEMPLATE_FILES[family]),
                        _npy_bytes(_kid_template(mesh)))
    return paths
