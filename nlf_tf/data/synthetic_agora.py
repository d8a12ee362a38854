"""A tiny synthetic AGORA folder in the native layout, rendered from SMPL-X body models.

`write_agora(root, seed, body_model_dir)` writes what the AGORA download holds (see
`nlf_tf.data.agora`), at a small image size (default 216 x 384, i.e. 3840 x 2160 scaled by 0.1):

    <root>/seg_rgbs.txt                               label palette (AirSim format, own colours)
    <root>/train_0/ag_trainset_<...>_<NNNNN>.png      renders
    <root>/Cam/train_0.pkl                            DataFrame, one row per image
    <root>/SMPLX/train_0_withjv.pkl                   the same + gt_joints_2d (4K pixels),
                                                      gt_joints_3d, gt_verts (camera metres;
                                                      the model's own joints, not AGORA's 127)
    <root>/smplx_gt/<subfolder>/<scan>.pkl, .obj      SMPL-X fits in the SCAN frame
    <root>/train/<scene_prefix>/<base>_00000.png      colour labels (background pure red)
    <root>/train/<scene_prefix>/<base>_<p+1:05d>.png  amodal mask of person p
    <root>/synthetic_agora.json                       settings; written last (completion mark)

The scene families rotate over archviz (cam02, cam00), hdri, ag2 and an "other" scene with a
DataFrame camera, so every camera rule of the reader is exercised. Each person: a random gender
(some kids with a kid factor, if the body-model folder has the SMIL-X template; female kids use
the neutral model like the reader), random betas and expression, a `pose_for_demo` pose; the fit
is stored in a scan frame (SMPL's y-up axes, random facing and offset), hand poses relative to
the hand mean, and the DataFrame's X/Y/Z/Yaw are chosen so that the scan-to-world map puts the
feet on the ground in view of the camera. The body is posed in the scan frame by the NumPy
reference model and its VERTICES are moved rigidly into the world (not its parameters), then
rendered with a z-buffer (filled triangles, Lambert-like shading); label and amodal masks come
from the same raster, occlusion = 100 x (1 - visible / amodal pixels), isValid = occlusion <= 90.
"""

import json
import os
import pickle
import shutil

import numpy as np

from nlf_tf.data import agora, raster

SETTINGS_FILE = 'synthetic_agora.json'
FORMAT_VERSION = 1
PALETTE_SIZE = 64
# (scene family, image-name template); the template gets the split phase and the frame number.
SCENES = (
    ('cam02', 'ag_{phase}set_renderpeople_bfh_archviz_5_10_cam02_{num:05d}.png'),
    ('hdri', 'ag_{phase}set_renderpeople_body_hdri_50mm_5_10_{num:05d}.png'),
    ('other', 'ag_{phase}set_3dpeople_bfh_brushifyforest_5_15_{num:05d}.png'),
    ('ag2', 'ag_{phase}set_axyz_bfh_ag2_5_10_{num:05d}.png'),
    ('cam00', 'ag_{phase}set_humanalloy_bfh_archviz_5_15_cam00_{num:05d}.png'),
)
_SPLITS = {'train': ('train', 'train_0', 'train'),
           'val': ('validation', 'validation', 'validation')}


def make_palette(size=PALETTE_SIZE, min_distance=40, seed=1234):
    """int32 [size, 3] RGB colours, pairwise (and from the pure-red background) at least
    `min_distance` apart in some channel, so the +-10 matching of the reader is unambiguous."""
    rng = np.random.default_rng(seed)
    colours = [np.asarray(agora.BACKGROUND_RGB)]
    while len(colours) < size + 1:
        c = rng.integers(0, 256, 3)
        if all(np.max(np.abs(c - o)) >= min_distance for o in colours):
            colours.append(c)
    return np.asarray(colours[1:], np.int32)


def write_palette(path, palette):
    with open(path, 'w', encoding='utf-8') as f:
        for i, (r, g, b) in enumerate(np.asarray(palette)):
            f.write(f'{i}\t[{r}, {g}, {b}]\n')


def render_people(camera, shape, people_vertices, faces, colours, background):
    """Renders people (world vertices [V, 3] each) with a z-buffer.

    Returns (image uint8 [H, W, 3], owner int [H, W] (-1 = background), amodal bool [P, H, W]).
    """
    height, width = shape
    all_pix, all_dep, all_owner, all_shade = [], [], [], []
    amodal = np.zeros((len(people_vertices), height, width), bool)
    for p, vertices in enumerate(people_vertices):
        cam_points = camera.world_to_camera(vertices).astype(np.float64)
        image_points = camera.camera_to_image(cam_points).astype(np.float64)
        pix, dep, fid = raster.rasterize(image_points, cam_points[:, 2], faces, shape)
        amodal[p].reshape(-1)[pix] = True
        shade = raster.face_shading(cam_points, faces)
        all_pix.append(pix)
        all_dep.append(dep)
        all_owner.append(np.full(len(pix), p))
        all_shade.append(shade[fid])
    image = background.copy()
    owner = np.full(height * width, -1)
    if all_pix:
        pix, dep = np.concatenate(all_pix), np.concatenate(all_dep)
        who, shade = np.concatenate(all_owner), np.concatenate(all_shade)
        order = np.lexsort((dep, pix))  # per pixel, nearest fragment first
        pix, who, shade = pix[order], who[order], shade[order]
        first = np.ones(len(pix), bool)
        first[1:] = pix[1:] != pix[:-1]
        pix, who, shade = pix[first], who[first], shade[first]
        owner[pix] = who
        flat = image.reshape(-1, 3)
        flat[pix] = np.clip(np.asarray(colours, np.float64)[who] * shade[:, None], 0, 255)
    return image, owner.reshape(height, width), amodal


def background_image(rng, shape):
    """A smooth two-tone backdrop with noise (uint8 [H, W, 3])."""
    height, width = shape
    top, bottom = rng.uniform(60, 200, 3), rng.uniform(40, 160, 3)
    t = np.linspace(0, 1, height)[:, None, None]
    image = top * (1 - t) + bottom * t + rng.normal(0, 6, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Scene layout

def _scene_camera_values(rng, family):
    """DataFrame camX, camY, camZ (cm), camYaw (deg): random for 'other', the fixed pose
    otherwise (the reader ignores them there)."""
    _, location, yaw, _ = agora.SCENE_CAMERAS[family]
    if location is None:
        return (float(rng.uniform(-300, 300)), float(rng.uniform(-300, 300)),
                float(rng.uniform(-30, 30)), float(rng.uniform(-180, 180)))
    return (*[float(v) for v in location], float(yaw))


def _ground_point(rng, camera, shape):
    """A world point on the ground plane y = 0 seen at a random pixel in the lower image, or
    None if that pixel looks above the horizon or too far."""
    height, width = shape
    pixel = np.array([[rng.uniform(0.15, 0.85) * width, rng.uniform(0.5, 0.97) * height]])
    near = camera.image_to_world(pixel, depth=1.0)[0].astype(np.float64)
    far = camera.image_to_world(pixel, depth=2.0)[0].astype(np.float64)
    direction = far - near
    if direction[1] <= 1e-6:
        return None
    t = -near[1] / direction[1]
    point = near + t * direction
    if np.linalg.norm(point - camera.optical_center) > 25:
        return None
    return point


def _y_rotation_vector(angle):
    return np.array([0.0, angle, 0.0])


def _box_of(points2d):
    lo, hi = points2d.min(axis=0), points2d.max(axis=0)
    return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]])


def _person(rng, models, has_kid_template, kid_probability, index, phase):
    """One random person: DataFrame attributes, fit dict and the scan-frame body."""
    from nlf_tf.body_models import numpy_model
    from nlf_tf.body_models.synthetic import pose_for_demo

    gender = str(rng.choice(['female', 'male']))
    is_kid = bool(has_kid_template and rng.uniform() < kid_probability)
    model_gender = agora.body_gender(gender, is_kid)
    model = models[model_gender]
    pose = np.array(pose_for_demo(rng, 'smplx'), np.float64).reshape(-1)
    pose[:3] = _y_rotation_vector(rng.uniform(-np.pi, np.pi))  # the scan's own facing
    betas = rng.normal(0, 0.7, 10)
    expression = rng.normal(0, 0.5, 10)
    kid_factor = float(rng.uniform(0.3, 0.9)) if is_kid else 0.0
    transl = rng.normal(0, 0.2, 3)
    vertices, joints = numpy_model.forward(
        model, pose[None], betas[None], expression[None], kid_factor, transl[None])
    fit, start = {}, 0
    for key, size in agora.FIT_POSE_KEYS:
        fit[key] = pose[start:start + size][None].astype(np.float32)
        start += size
    hand_mean = np.asarray(model['hand_mean'], np.float64)
    fit['left_hand_pose'] = (pose[75:120] - hand_mean[:45])[None].astype(np.float32)
    fit['right_hand_pose'] = (pose[120:165] - hand_mean[45:])[None].astype(np.float32)
    fit['betas'] = np.concatenate([betas, [kid_factor]] if is_kid else [betas])[None].astype(
        np.float32)
    fit['expression'] = expression[None].astype(np.float32)
    fit['transl'] = transl[None].astype(np.float32)
    age = 'kids' if is_kid else 'adults'
    scan = f'syn_{index:04d}_0_0'
    return dict(gender=gender, kid=is_kid, fit=fit, scan_vertices=vertices[0],
                scan_joints=joints[0], faces=model['faces'],
                gt_path_smplx=f'smplx_gt/{phase}set_synthetic_{age}_bfh/{scan}.obj')


def _place(rng, person, camera, shape, placed_boxes, attempts=60):
    """Yaw, location (cm) and world vertices putting the person's feet on the ground in view;
    None if no placement is found."""
    height, width = shape
    verts = person['scan_vertices']
    pelvis = person['scan_joints'][0]
    feet = np.array([pelvis[0], verts[:, 1].min(), pelvis[2]])
    for _ in range(attempts):
        ground = _ground_point(rng, camera, shape)
        if ground is None:
            continue
        yaw = float(rng.uniform(-180, 180))
        rot, _ = agora.scan_to_world(yaw, np.zeros(3))
        offset = ground - rot @ feet
        world = _to_world(verts, rot, offset)
        cam_points = camera.world_to_camera(world)
        if np.any(cam_points[:, 2] < 0.5):
            continue
        box = _box_of(camera.world_to_image(world))
        if (box[0] < 2 or box[1] < 2 or box[0] + box[2] > width - 3
                or box[1] + box[3] > height - 3 or box[3] < 0.25 * height):
            continue
        from nlf_tf.data.coco import box_iou
        if any(box_iou(box, other) > 0.25 for other in placed_boxes):
            continue
        return yaw, agora.world_to_unreal(offset), world, _to_world(
            person['scan_joints'], rot, offset), box
    return None


def _to_world(points, rot, offset):
    """Scan-frame points moved rigidly into the world: rot p + offset."""
    return points @ rot.T + offset


def _scene(rng, num, phase, family_index, models, has_kid_template, kid_probability, shape,
           people_per_image, palette, person_counter):
    family, template = SCENES[family_index % len(SCENES)]
    name = template.format(phase=phase, num=num)
    cam_x, cam_y, cam_z, cam_yaw = _scene_camera_values(rng, family)
    camera = agora.get_camera(name, [cam_x, cam_y, cam_z], cam_yaw, shape[1])
    n_people = int(rng.integers(people_per_image[0], people_per_image[1] + 1))
    people, boxes = [], []
    failures = 0
    while len(people) < n_people:
        person = _person(rng, models, has_kid_template, kid_probability, next(person_counter),
                         phase)
        placement = _place(rng, person, camera, shape, boxes)
        if placement is None:
            failures += 1
            if failures > 20:
                if people:
                    break  # crowded: keep the people placed so far
                raise RuntimeError(f'cannot place a person in view of the camera of {name}')
            continue
        (person['yaw'], person['location'], person['world_vertices'], person['world_joints'],
         box) = placement
        boxes.append(box)
        people.append(person)
    colours = rng.uniform(90, 255, (len(people), 3))
    image, owner, amodal = render_people(
        camera, shape, [p['world_vertices'] for p in people], people[0]['faces'], colours,
        background_image(rng, shape))
    label = np.empty(shape + (3,), np.uint8)
    label[:] = agora.BACKGROUND_RGB
    for p in range(len(people)):
        label[owner == p] = palette[p]
        visible = np.count_nonzero(owner == p)
        total = max(np.count_nonzero(amodal[p]), 1)
        people[p]['occlusion'] = float(100.0 * (1.0 - visible / total))
    return dict(name=name, family=family, camera=camera, cam=(cam_x, cam_y, cam_z, cam_yaw),
                people=people, image=image, label=label, amodal=amodal)


# --------------------------------------------------------------------------------------------
# Writing

def _write_png(path, image):
    import tensorflow as tf
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    with open(path, 'wb') as f:
        f.write(tf.io.encode_png(image).numpy())


def _write_obj(path, vertices, faces):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        f.writelines(f'v {x:.6f} {y:.6f} {z:.6f}\n' for x, y, z in vertices)
        f.writelines(f'f {a + 1} {b + 1} {c + 1}\n' for a, b, c in faces)


def _settings(seed, num_images, image_size, split, people_per_image, kid_probability):
    return dict(format_version=FORMAT_VERSION, seed=seed, num_images=int(num_images),
                image_size=[int(v) for v in image_size], split=split,
                people_per_image=[int(v) for v in people_per_image],
                kid_probability=float(kid_probability))


def write_agora(root, rng_or_seed=0, body_model_dir=None, num_images=5, image_size=(216, 384),
                split='train', people_per_image=(2, 3), kid_probability=0.3):
    """Writes a synthetic AGORA folder at `root` (see the module docstring); returns `root`.

    body_model_dir: SMPL-X model files (e.g. from
      `nlf_tf.body_models.synthetic.write_synthetic_body_models`); a kid template there enables
      kids. image_size: (H, W), 16:9 (the reader scales the 4K intrinsics by W / 3840).
    Idempotent for an integer seed: a complete folder written with the same settings is kept.
    The folder is built in a temporary sibling and renamed into place, so an interrupted run
    leaves nothing half-written at `root`.
    """
    import pandas as pd

    from nlf_tf.body_models import files

    if body_model_dir is None:
        raise ValueError('write_agora needs body_model_dir (SMPL-X model files)')
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    height, width = (int(v) for v in image_size)
    if abs(height / width - agora.REFERENCE_HEIGHT / agora.REFERENCE_WIDTH) > 0.01:
        raise ValueError(f'image_size must be 16:9 (H, W) like AGORA, got {image_size}')
    seed = rng_or_seed if isinstance(rng_or_seed, (int, np.integer)) else None
    rng = np.random.default_rng(rng_or_seed) if seed is not None else rng_or_seed
    settings = _settings(None if seed is None else int(seed), num_images, (height, width), split,
                         people_per_image, kid_probability)
    root = os.path.abspath(os.fspath(root))
    settings_path = os.path.join(root, SETTINGS_FILE)
    if os.path.exists(settings_path):
        with open(settings_path, encoding='utf-8') as f:
            saved = json.load(f)
        if seed is not None and saved == settings:
            return root
        raise ValueError(f'{root} holds synthetic AGORA data written with other settings '
                         f'({saved}); delete it or choose another folder')
    if os.path.exists(root) and os.listdir(root):
        raise ValueError(f'{root} exists and is not a synthetic AGORA folder (no '
                         f'{SETTINGS_FILE}); refusing to write into it')

    models = {g: files.load_body_model(body_model_dir, 'smplx', g) for g in ('f', 'm', 'n')}
    has_kid_template = all(m['kid_shapedir'] is not None for m in models.values())
    phase, image_dir_name, mask_dir_name = _SPLITS[split]
    section = f'{phase}_0'
    palette = make_palette()

    tmp = f'{root}.tmp{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        write_palette(os.path.join(tmp, 'seg_rgbs.txt'), palette)
        counter = iter(range(10 ** 9))
        rows, rows_jv = [], []
        for i in range(int(num_images)):
            scene = _scene(rng, i + 1, phase, i, models, has_kid_template, kid_probability,
                           (height, width), people_per_image, palette, counter)
            people = scene['people']
            _write_png(os.path.join(tmp, image_dir_name, scene['name']), scene['image'])
            mask_scene, mask_base = agora.mask_file_base(scene['name'])
            mask_folder = os.path.join(tmp, mask_dir_name, mask_scene)
            _write_png(os.path.join(mask_folder, f'{mask_base}_00000.png'), scene['label'])
            for p in range(len(people)):
                _write_png(os.path.join(mask_folder, f'{mask_base}_{p + 1:05d}.png'),
                           scene['amodal'][p].astype(np.uint8) * 255)
            for person in people:
                fit_path = os.path.join(tmp, os.path.splitext(person['gt_path_smplx'])[0])
                os.makedirs(os.path.dirname(fit_path), exist_ok=True)
                with open(fit_path + '.pkl', 'wb') as f:
                    pickle.dump(person['fit'], f, protocol=4)
                _write_obj(fit_path + '.obj', person['scan_vertices'], person['faces'])
            cam_x, cam_y, cam_z, cam_yaw = scene['cam']
            row = dict(
                imgPath=scene['name'],
                X=[float(p['location'][0]) for p in people],
                Y=[float(p['location'][1]) for p in people],
                Z=[float(p['location'][2]) for p in people],
                Yaw=[p['yaw'] for p in people],
                camX=cam_x, camY=cam_y, camZ=cam_z, camYaw=cam_yaw,
                gender=[p['gender'] for p in people], kid=[p['kid'] for p in people],
                occlusion=[p['occlusion'] for p in people],
                isValid=[p['occlusion'] <= 90 for p in people],
                gt_path_smplx=[p['gt_path_smplx'] for p in people])
            rows.append(row)
            camera = scene['camera']
            scale = width / agora.REFERENCE_WIDTH
            rows_jv.append(dict(
                row,
                gt_joints_2d=[camera.world_to_image(p['world_joints']) / scale for p in people],
                gt_joints_3d=[camera.world_to_camera(p['world_joints']) for p in people],
                gt_verts=[camera.world_to_camera(p['world_vertices']) for p in people]))
        os.makedirs(os.path.join(tmp, 'Cam'))
        os.makedirs(os.path.join(tmp, 'SMPLX'))
        pd.DataFrame(rows).to_pickle(os.path.join(tmp, 'Cam', f'{section}.pkl'))
        pd.DataFrame(rows_jv).to_pickle(os.path.join(tmp, 'SMPLX', f'{section}_withjv.pkl'))
        with open(os.path.join(tmp, SETTINGS_FILE), 'w', encoding='utf-8') as f:
            json.dump(settings, f, indent=1)
        if os.path.exists(root):
            os.rmdir(root)  # empty (checked above)
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
