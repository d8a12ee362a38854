"""A small synthetic BEHAVE folder in the native layout, for tests and the demo.

`write_behave(root, rng_or_seed, body_model_dir)` writes, under `root`:
    split.json                                        {"train": [...], "test": [...]}
    calibs/intrinsics/<k>/calibration.json            per Kinect k = 0..3: "color" / "depth" with
                                                      fx fy cx cy width height k1..k6 p1 p2 opencv
    calibs/<DateXX>/config/<k>/config.json            camera-to-world rotation (9) + translation
    sequences/<seq>/info.json                         gender, kinects, intrinsic/config folders
    sequences/<seq>/t<SSSS>.000/k<k>.color.jpg        rendered frame
    sequences/<seq>/t<SSSS>.000/k<k>.person_mask.jpg  grayscale person mask (255 = person)
    sequences/<seq>/t<SSSS>.000/person/person_J3d.json    BODY_25 joints (x, y, z m, score)
    sequences/<seq>/t<SSSS>.000/person/fit02/person_fit.pkl  pose (156), betas (10), trans (3)

People are SMPL+H bodies of the (synthetic or real) models in `body_model_dir` (see
`nlf_tf.body_models.synthetic.write_synthetic_body_models`), posed with
`nlf_tf.body_models.synthetic.pose_for_demo`, placed in the world frame of Kinect 1 (identity
config, y down) and rendered (filled triangles with a z-buffer, Lambert shading, per-part
colours) through each Kinect's distorted camera (8-coefficient rational model), so that the
ground truth projects onto the drawn pixels. Triangles are rasterised on the distorted projections
of their vertices (exact at the vertices, a close approximation inside the small triangles).

In every sequence the third frame repeats the first frame's pose and position exactly: the
buffered frame sampler of the reader drops it (the plain one would keep it). The other frames are
at least 0.2 m apart (pelvis) from every earlier frame, so they are kept.
"""

import json
import os
import pickle

import numpy as np

from nlf_tf.data import raster
from nlf_tf.data.camera import Camera

IMAGE_SHAPE = (192, 256)  # H, W: the Kinect's 4:3 aspect at 1/8 of 2048 x 1536
NUM_KINECTS = 4
FRAMES_PER_SEQUENCE = 4
REPEATED_FRAME = 2  # this frame repeats frame 0
JPEG_QUALITY = 95
SUPERSAMPLING = 2
# (name, split, gender); Sub01-Sub05 are male, Sub06-Sub08 female, the test split is Date03.
DEFAULT_SEQUENCES = (
    ('Date01_Sub01_boxsmall_hand', 'train', 'male'),
    ('Date03_Sub04_chairwood_sit', 'test', 'male'),
    ('Date05_Sub06_toolbox_lift', 'train', 'female'),
)
PERSON_DISTANCE = 2.6  # metres from Kinect 1 (the world origin)
PELVIS_HEIGHT = -0.05  # world y of the pelvis (y down: 5 cm above the cameras' height)
BODY_CENTRE_BELOW_PELVIS = 0.1  # the middle between head top and soles, metres
BACKGROUND = np.array([118.0, 112.0, 104.0])
# RGB per body part (joint index % len) for the shaded rendering
PART_COLOURS = np.array([
    [200, 80, 70], [70, 150, 200], [90, 190, 110], [210, 170, 60], [160, 90, 200],
    [230, 130, 170], [80, 200, 200], [190, 190, 190]], np.float64)


def write_behave(root, rng_or_seed, body_model_dir, frames_per_sequence=FRAMES_PER_SEQUENCE,
                 image_shape=IMAGE_SHAPE, sequences=DEFAULT_SEQUENCES):
    """Writes a synthetic BEHAVE folder; returns a summary dict.

    Args:
        root: output folder (created; existing files of the same names are overwritten).
        rng_or_seed: a numpy Generator or an int seed.
        body_model_dir: folder with smplh/SMPLH_{MALE,FEMALE}.pkl.
        frames_per_sequence: frames per sequence (>= 3; frame 2 repeats frame 0).
        image_shape: (height, width) of the Kinect images.
        sequences: (name, split, gender) triples; names start with 'DateXX_'.
    Returns:
        dict root, image_shape, split {'train': [...], 'test': [...]}, sequences {name: dict(split,
        gender, frames [folder names], repeated [folder names of exact repeats])}.
    """
    from nlf_tf.body_models import files as body_model_files

    rng = (rng_or_seed if isinstance(rng_or_seed, np.random.Generator)
           else np.random.default_rng(rng_or_seed))
    if frames_per_sequence < REPEATED_FRAME + 1:
        raise ValueError(f'frames_per_sequence must be >= {REPEATED_FRAME + 1}, got '
                         f'{frames_per_sequence}')
    height, width = int(image_shape[0]), int(image_shape[1])
    root = os.path.abspath(os.fspath(root))

    intrinsics = [kinect_intrinsics(rng, (height, width)) for _ in range(NUM_KINECTS)]
    for k, intr in enumerate(intrinsics):
        _write_json(os.path.join(root, 'calibs', 'intrinsics', str(k), 'calibration.json'),
                    calibration_json(intr, (height, width)))
    configs = {}
    for name, _, _ in sequences:
        date = name.split('_', 1)[0]
        if date not in configs:
            configs[date] = kinect_extrinsics(rng)
            for k, (rot_c2w, center) in enumerate(configs[date]):
                _write_json(os.path.join(root, 'calibs', date, 'config', str(k), 'config.json'),
                            dict(rotation=rot_c2w.reshape(-1).tolist(),
                                 translation=center.tolist()))

    split = {'train': [], 'test': []}
    summary = {}
    for name, split_name, gender in sequences:
        split[split_name].append(name)
        date = name.split('_', 1)[0]
        model = body_model_files.load_body_model(body_model_dir, 'smplh', gender)
        cameras = [Camera(intr['K'], rot_c2w.T, center, distortion=intr['distortion'],
                          world_up=(0, -1, 0))
                   for intr, (rot_c2w, center) in zip(intrinsics, configs[date])]
        summary[name] = _write_sequence(
            rng, os.path.join(root, 'sequences', name), date, gender, model, cameras,
            frames_per_sequence, (height, width))
        summary[name]['split'] = split_name
    _write_json(os.path.join(root, 'split.json'), split)
    return dict(root=root, image_shape=(height, width), split=split, sequences=summary)


# ---------------------------------------------------------------------------------------------
# Cameras

def kinect_intrinsics(rng, image_shape):
    """dict K (3x3), distortion (k1, k2, p1, p2, k3, k4, k5, k6) of a small fake Azure Kinect."""
    height, width = image_shape
    # a 1.9 m tall box at the person distance fills ~72 % of the image height
    focal = 0.72 * height * PERSON_DISTANCE / 1.9 * rng.uniform(0.97, 1.03)
    K = np.array([[focal, 0.0, (width - 1) / 2 + rng.uniform(-3, 3)],
                  [0.0, focal * rng.uniform(0.995, 1.005), (height - 1) / 2 + rng.uniform(-3, 3)],
                  [0.0, 0.0, 1.0]])
    # rational model, mild: radial factor ~ 1 + 0.07 r^2 near the centre, as the real Kinects
    # combine large numerator and denominator terms
    distortion = np.array([
        0.35 + rng.uniform(-0.03, 0.03), -0.08 + rng.uniform(-0.01, 0.01),
        rng.uniform(-5e-4, 5e-4), rng.uniform(-5e-4, 5e-4), 0.01 + rng.uniform(-0.003, 0.003),
        0.28 + rng.uniform(-0.03, 0.03), -0.05 + rng.uniform(-0.01, 0.01),
        0.008 + rng.uniform(-0.002, 0.002)])
    return dict(K=K, distortion=distortion)


def calibration_json(intr, image_shape):
    """The Azure-Kinect-style calibration.json content (colour and a plausible depth block)."""
    height, width = image_shape
    K, dist = intr['K'], intr['distortion']

    def block(K, dist, w, h):
        out = dict(fx=K[0, 0], fy=K[1, 1], cx=K[0, 2], cy=K[1, 2], width=w, height=h,
                   codx=0.0, cody=0.0, metric_radius=0.0)
        out.update({key: float(v) for key, v in zip(('k1', 'k2', 'p1', 'p2', 'k3', 'k4', 'k5',
                                                       'k6'), dist)})
        out['opencv'] = [K[0, 0], K[1, 1], K[0, 2], K[1, 2], *dist]
        return {key: (float(v) if isinstance(v, (float, np.floating)) else
                      [float(x) for x in v] if isinstance(v, list) else v)
                for key, v in out.items()}

    depth_k = np.array([[0.7 * K[0, 0], 0, width / 4], [0, 0.7 * K[0, 0], height / 4], [0, 0, 1]])
    return dict(
        color=block(K, dist, width, height),
        depth=block(depth_k, dist * 0.5, width // 2, height // 2),
        color_to_depth=dict(rotation=np.eye(3).reshape(-1).tolist(),
                            translation=[-0.032, -0.002, 0.004]),
        depth_to_color=dict(rotation=np.eye(3).reshape(-1).tolist(),
                            translation=[0.032, 0.002, -0.004]))


def look_at_rotation(position, target, world_up=(0, -1, 0)):
    """World->camera rotation (x right, y down, z forward) of a camera at `position` looking at
    `target`, upright w.r.t. `world_up`."""
    z = np.asarray(target, np.float64) - np.asarray(position, np.float64)
    z /= np.linalg.norm(z)
    x = np.cross(-np.asarray(world_up, np.float64), z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z])


def kinect_extrinsics(rng):
    """[(rotation camera->world 3x3, centre 3)] for Kinects 0..3; Kinect 1 is the world frame.

    The others stand on a circle around the person spot, looking at it, at about the same height.
    """
    spot = np.array([0.0, PELVIS_HEIGHT + BODY_CENTRE_BELOW_PELVIS, PERSON_DISTANCE])
    out = []
    for k, azimuth_deg in enumerate((-85.0, 0.0, 85.0, 180.0)):
        if k == 1:
            out.append((np.eye(3), np.zeros(3)))
            continue
        azimuth = np.deg2rad(azimuth_deg + rng.uniform(-10, 10))
        distance = PERSON_DISTANCE * rng.uniform(0.95, 1.05)
        # azimuth 0 is Kinect 1's position (on the -z side of the spot)
        center = spot + distance * np.array([np.sin(azimuth), 0.0, -np.cos(azimuth)])
        center[1] = rng.uniform(-0.1, 0.1)
        rot_w2c = look_at_rotation(center, spot)
        out.append((rot_w2c.T, center))
    return out


# ---------------------------------------------------------------------------------------------
# People

def _global_orientation(yaw):
    """Axis-angle of: model axes (y up, facing +z) -> world (y down), turned by `yaw` about the
    vertical; yaw 0 faces Kinect 1 (world -z)."""
    from scipy.spatial.transform import Rotation

    flip = np.diag([1.0, -1.0, -1.0])  # 180 degrees about x
    c, s = np.cos(yaw), np.sin(yaw)
    turn = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return Rotation.from_matrix(turn @ flip).as_rotvec()


def _sequence_params(rng, model, num_frames):
    """pose [F, 156], betas [10], trans [F, 3]: frame REPEATED_FRAME repeats frame 0 exactly,
    other frames' pelvises are >= 0.2 m from every earlier frame's."""
    from nlf_tf.body_models import numpy_model
    from nlf_tf.body_models import synthetic as body_synthetic

    betas = rng.normal(0.0, 0.6, 10)
    rest_pelvis = numpy_model.rest_pelvis(model, betas[np.newaxis])[0]
    poses, pelvises = [], []
    x_start = rng.uniform(-0.35, -0.25)
    step = 0
    for f in range(num_frames):
        if f == REPEATED_FRAME:
            poses.append(poses[0].copy())
            pelvises.append(pelvises[0].copy())
            continue
        pose = np.asarray(body_synthetic.pose_for_demo(rng, 'smplh'), np.float64).reshape(-1)
        pose[:3] = _global_orientation(rng.uniform(-0.6, 0.6))
        poses.append(pose)
        # walk sideways in 0.2 m steps (plus jitter in depth) so no earlier position recurs
        pelvises.append(np.array([x_start + 0.2 * step, PELVIS_HEIGHT + rng.uniform(-0.02, 0.02),
                                  PERSON_DISTANCE + rng.uniform(-0.05, 0.05)]))
        step += 1
    poses = np.stack(poses)
    # the global rotation acts about the rest pelvis, so the posed pelvis = rest pelvis + trans
    trans = np.stack(pelvises) - rest_pelvis
    return poses, betas, trans


def body25_landmarks(model):
    """How to read BODY_25 points off a posed body: list of ('joint', index) / ('vertex', index)
    (nose, eyes, ears, toes, heels are surface vertices picked on the rest template)."""
    from nlf_tf.body_models import kinds

    names = kinds.JOINT_NAMES['smplh']
    joint = {n: names.index(n) for n in names}
    template = np.asarray(model['v_template'], np.float64)
    owner = np.argmax(np.asarray(model['weights']), axis=1)

    def vertex(joint_names, score):
        ids = np.flatnonzero(np.isin(owner, [joint[n] for n in joint_names]))
        if len(ids) == 0:  # no vertex skinned mainly to these joints: use the first joint
            return ('joint', joint[joint_names[0]])
        return ('vertex', int(ids[np.argmax(score(template[ids]))]))

    head = ('head',)
    left_foot, right_foot = ('left_foot', 'left_ankle'), ('right_foot', 'right_ankle')
    # model axes: x = the person's left, y up, z forward
    return [
        vertex(head, lambda v: v[:, 2]),                                  # nose
        ('joint', joint['neck']), ('joint', joint['right_shoulder']),
        ('joint', joint['right_elbow']), ('joint', joint['right_wrist']),
        ('joint', joint['left_shoulder']), ('joint', joint['left_elbow']),
        ('joint', joint['left_wrist']), ('joint', joint['pelvis']),       # MidHip
        ('joint', joint['right_hip']), ('joint', joint['right_knee']),
        ('joint', joint['right_ankle']), ('joint', joint['left_hip']),
        ('joint', joint['left_knee']), ('joint', joint['left_ankle']),
        vertex(head, lambda v: v[:, 2] - 0.5 * v[:, 0] + v[:, 1]),        # right eye
        vertex(head, lambda v: v[:, 2] + 0.5 * v[:, 0] + v[:, 1]),        # left eye
        vertex(head, lambda v: -v[:, 0]),                                 # right ear
        vertex(head, lambda v: v[:, 0]),                                  # left ear
        vertex(left_foot, lambda v: v[:, 2] - 0.3 * v[:, 0]),             # left big toe
        vertex(left_foot, lambda v: v[:, 2] + 0.3 * v[:, 0]),             # left small toe
        vertex(left_foot, lambda v: -v[:, 2] - v[:, 1]),                  # left heel
        vertex(right_foot, lambda v: v[:, 2] + 0.3 * v[:, 0]),            # right big toe
        vertex(right_foot, lambda v: v[:, 2] - 0.3 * v[:, 0]),            # right small toe
        vertex(right_foot, lambda v: -v[:, 2] - v[:, 1]),                 # right heel
    ]


def body25_points(landmarks, vertices, joints):
    """[25, 3] BODY_25 positions of one posed body."""
    return np.stack([vertices[i] if what == 'vertex' else joints[i] for what, i in landmarks])


def _write_sequence(rng, seq_dir, date, gender, model, cameras, num_frames, image_shape):
    from nlf_tf.body_models import numpy_model

    poses, betas, trans = _sequence_params(rng, model, num_frames)
    vertices, joints = numpy_model.forward(model, poses, betas, trans=trans)
    landmarks = body25_landmarks(model)
    faces = np.asarray(model['faces'], np.int64)
    face_part = np.argmax(np.asarray(model['weights'])[faces].sum(axis=1), axis=1)

    _write_json(os.path.join(seq_dir, 'info.json'), dict(
        config=f'../../calibs/{date}/config', intrinsic='../../calibs/intrinsics',
        cat=os.path.basename(seq_dir).split('_')[2], gender=gender, empty=None,
        kinects=list(range(len(cameras))), beta=None))
    frames = []
    for f in range(num_frames):
        frame = f't{f:04d}.000'
        frames.append(frame)
        frame_dir = os.path.join(seq_dir, frame)
        body25 = body25_points(landmarks, vertices[f], joints[f])
        scores = rng.uniform(0.6, 0.95, (25, 1))
        _write_json(os.path.join(frame_dir, 'person', 'person_J3d.json'), dict(
            body_joints3d=np.concatenate([body25, scores], axis=1).reshape(-1).tolist()))
        fit_path = os.path.join(frame_dir, 'person', 'fit02', 'person_fit.pkl')
        os.makedirs(os.path.dirname(fit_path), exist_ok=True)
        with open(fit_path, 'wb') as fh:
            pickle.dump(dict(pose=poses[f].astype(np.float32), betas=betas.astype(np.float32),
                             trans=trans[f].astype(np.float32)), fh)
        for k, camera in enumerate(cameras):
            image, mask = render_person(rng, camera, vertices[f], faces, face_part, image_shape)
            _write_jpeg(os.path.join(frame_dir, f'k{k}.color.jpg'), image)
            _write_jpeg(os.path.join(frame_dir, f'k{k}.person_mask.jpg'),
                        (mask.astype(np.uint8) * 255)[..., np.newaxis])
    return dict(gender=gender, frames=frames, repeated=[frames[REPEATED_FRAME]])


# ---------------------------------------------------------------------------------------------
# Rendering

def render_person(rng, camera, vertices, faces, face_part, image_shape,
                  supersampling=SUPERSAMPLING):
    """(uint8 [H, W, 3] shaded image, bool [H, W] mask) of a mesh seen by `camera` (distorted).

    Rendered at `supersampling`x resolution; a pixel belongs to the mask if any of its
    sub-pixels is covered (thin parts such as fingers stay visible), the colour is the average.
    """
    height, width = image_shape
    s = supersampling
    points2d = camera.world_to_image(vertices).astype(np.float64)
    # pixel centre (x, y) of the output covers sub-pixel centres s x + (s - 1) / 2 +- ...
    fine = (points2d + 0.5) * s - 0.5
    depth = camera.world_to_camera(vertices)[:, 2].astype(np.float64)
    face_id = raster.visible_faces(fine, depth, faces, (height * s, width * s), min_depth=1e-3)

    shade = raster.face_shading(camera.world_to_camera(vertices), faces)
    face_colour = PART_COLOURS[face_part % len(PART_COLOURS)] * shade[:, np.newaxis]

    yy, xx = np.mgrid[0:height * s, 0:width * s]
    background = BACKGROUND + 25.0 * np.sin(xx / (9.0 * s))[..., np.newaxis] * [1, 0.8, 0.6] \
        + 20.0 * (yy / (height * s))[..., np.newaxis]
    covered = face_id >= 0
    fine_image = np.where(covered[..., np.newaxis], face_colour[np.maximum(face_id, 0)],
                          background)
    image = fine_image.reshape(height, s, width, s, 3).mean(axis=(1, 3))
    image = image + rng.normal(0.0, 2.0, image.shape)
    mask = covered.reshape(height, s, width, s).any(axis=(1, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


# ---------------------------------------------------------------------------------------------
# Files

def _write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=1)


def _write_jpeg(path, image):
    import tensorflow as tf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(tf.io.encode_jpeg(image, quality=JPEG_QUALITY).numpy())
