"""Names and sizes shared by the body models, the parametric pipeline and the trainer.

A body-model *kind* is `'{family}_{gender initial}'`, e.g. `smplx_n`, `smplh_f` (NLF's
`body_model` strings). Inside tf.data and the training step a kind travels as its index in
`KINDS` (an int32; -1 = no body model), the fixed order in which the trainer groups a batch
(NLF `prepare_inputs`). `smplxmoyo_f` is listed to keep NLF's order; no reader produces it.
"""

FAMILIES = ('smpl', 'smplh', 'smplx')
GENDERS = {'f': 'female', 'm': 'male', 'n': 'neutral'}
FAMILY_GENDERS = {'smpl': ('f', 'm', 'n'), 'smplh': ('f', 'm'), 'smplx': ('f', 'm', 'n')}
KINDS = ('smpl_f', 'smpl_m', 'smpl_n', 'smplh_f', 'smplh_m', 'smplx_f', 'smplx_m', 'smplx_n',
         'smplxmoyo_f')
NO_KIND = -1

# Per-example parameter widths carried by the pipeline and the trainer (NLF's loaders pad the
# pose to 55 x 3 and the shape to 128; expression coefficients travel separately, see README).
POSE_SIZE = 165
SHAPE_SIZE = 128
EXPRESSION_SIZE = 10

_BODY = (
    'pelvis', 'left_hip', 'right_hip', 'spine1', 'left_knee', 'right_knee', 'spine2',
    'left_ankle', 'right_ankle', 'spine3', 'left_foot', 'right_foot', 'neck', 'left_collar',
    'right_collar', 'head', 'left_shoulder', 'right_shoulder', 'left_elbow', 'right_elbow',
    'left_wrist', 'right_wrist')
_FINGERS = tuple(f'{finger}{i}' for finger in ('index', 'middle', 'pinky', 'ring', 'thumb')
                 for i in (1, 2, 3))
_LEFT_HAND = tuple(f'left_{f}' for f in _FINGERS)
_RIGHT_HAND = tuple(f'right_{f}' for f in _FINGERS)

JOINT_NAMES = {
    'smpl': _BODY + ('left_hand', 'right_hand'),
    'smplh': _BODY + _LEFT_HAND + _RIGHT_HAND,
    'smplx': _BODY + ('jaw', 'left_eye_smplhf', 'right_eye_smplhf') + _LEFT_HAND + _RIGHT_HAND,
}
NUM_JOINTS = {family: len(names) for family, names in JOINT_NAMES.items()}  # 24, 52, 55


def family_of(kind):
    """'smplx' of 'smplx_n' (also of the family name itself); ValueError if unknown."""
    family = kind.rsplit('_', 1)[0] if '_' in kind else kind
    if family == 'smplxmoyo':
        family = 'smplx'
    if family not in FAMILIES:
        raise ValueError(f'unknown body-model kind {kind!r}; known: {", ".join(KINDS)}')
    return family


def kind_name(family, gender):
    """'smplx_n' from ('smplx', 'neutral') or ('smplx', 'n'); ValueError naming the bad part."""
    if family not in FAMILIES:
        raise ValueError(f'unknown body-model family {family!r}; known: {", ".join(FAMILIES)}')
    g = str(gender).lower()
    initial = g[:1] if g in GENDERS.values() or g in GENDERS else None
    if initial not in FAMILY_GENDERS[family]:
        raise ValueError(f'unknown gender {gender!r} for {family}; known: '
                         f'{", ".join(GENDERS[x] for x in FAMILY_GENDERS[family])}')
    return f'{family}_{initial}'


def kind_index(kind):
    """Index of `kind` in KINDS; ValueError if unknown."""
    try:
        return KINDS.index(kind)
    except ValueError:
        raise ValueError(f'unknown body-model kind {kind!r}; known: {", ".join(KINDS)}') from None
