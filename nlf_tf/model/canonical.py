"""Learned canonical positions of the global joint table (NLF §6.4, `canonical_locs`).

Every named joint has an initial canonical position. The learned part is a bounded offset
(row norm ≤ 0.07 m) that keeps the table exactly left/right symmetric: left joints have a free
3D offset, their right partners use the same offset with x negated, centre joints have free
(y, z) offsets with x fixed to 0, and hand joints never move.

Classification: a name starting with 'l' whose partner 'r' + name[1:] exists in the table is a
left joint and that partner its right joint. Every other joint, including an 'l…' name without
a partner (e.g. 'lowerback') and an 'r…' name without an 'l…' partner, is a centre joint: its
x stays at the initial value, so the initial table should put such joints on the mid-plane.
"""

import keras
import numpy as np
import tensorflow as tf

HAND_TOKENS = ('thumb', 'index', 'middle', 'ring', 'pinky')
MAX_DELTA_NORM = 0.07


def is_hand_joint(name):
    """NLF's hand test on the first '_'-separated token of the name: it contains a finger word,
    or it starts with 'lhan'/'rhan' and is longer than 4 characters ('lhand', 'rhandtip')."""
    token = name.split('_')[0]
    if any(finger in token for finger in HAND_TOKENS):
        return True
    return token.startswith(('lhan', 'rhan')) and len(token) > 4


def split_joints(joint_names):
    """(left indices, their right partners in the same order, centre indices)."""
    index_of = {name: i for i, name in enumerate(joint_names)}
    i_left = [i for i, name in enumerate(joint_names)
              if name.startswith('l') and ('r' + name[1:]) in index_of]
    i_right = [index_of['r' + joint_names[i][1:]] for i in i_left]
    sided = set(i_left) | set(i_right)
    i_center = [i for i in range(len(joint_names)) if i not in sided]
    return i_left, i_right, i_center


@keras.saving.register_keras_serializable(package='nlf_tf')
class CanonicalJoints(keras.layers.Layer):
    """The canonical joint table: `canonical_locs()` (also `call()`) -> float32 [J, 3].

    Variables (float32, zero-initialised, constrained to row norm ≤ `max_delta_norm` after every
    optimizer application): 'canonical_lefts' [n_L, 3] and 'canonical_centers' [n_C, 2] (y, z).
    Use the standard `trainable` argument for NLF's `trainable_canonical_joints`.
    """

    def __init__(self, joint_names, initial_positions, max_delta_norm=MAX_DELTA_NORM, **kwargs):
        # The table is float32 under any policy (it feeds float32 canonical points).
        kwargs.setdefault('dtype', 'float32')
        kwargs.setdefault('autocast', False)
        super().__init__(**kwargs)
        joint_names = list(joint_names)
        if not joint_names or not all(isinstance(n, str) and n for n in joint_names):
            raise ValueError('joint_names must be a non-empty list of non-empty strings')
        if len(set(joint_names)) != len(joint_names):
            duplicates = sorted({n for n in joint_names if joint_names.count(n) > 1})
            raise ValueError(f'joint_names contains duplicates: {duplicates}')
        init = np.asarray(initial_positions, dtype=np.float32)
        if init.shape != (len(joint_names), 3):
            raise ValueError(
                f'initial_positions must have shape [{len(joint_names)}, 3] (one row per joint '
                f'name), got {init.shape}')
        if not np.all(np.isfinite(init)):
            raise ValueError('initial_positions must be finite')
        self.joint_names = tuple(joint_names)  # a tuple: Keras would wrap a list attribute
        self.initial_positions = init
        self.max_delta_norm = float(max_delta_norm)

        i_left, i_right, i_center = split_joints(joint_names)
        self.i_left, self.i_right, self.i_center = tuple(i_left), tuple(i_right), tuple(i_center)
        # Row k of [lefts; rights; centres] belongs to joint _permutation[k].
        self._permutation = np.array(i_left + i_right + i_center, np.int32)
        self.delta_mask = np.array(
            [0.0 if is_hand_joint(n) else 1.0 for n in joint_names], np.float32)

        def constraint():
            return keras.constraints.MinMaxNorm(
                min_value=0.0, max_value=self.max_delta_norm, rate=1.0, axis=1)

        self.canonical_lefts = self.add_weight(
            shape=(len(self.i_left), 3), initializer='zeros', dtype='float32',
            trainable=self.trainable, constraint=constraint(), autocast=False,
            name='canonical_lefts')
        self.canonical_centers = self.add_weight(
            shape=(len(self.i_center), 2), initializer='zeros', dtype='float32',
            trainable=self.trainable, constraint=constraint(), autocast=False,
            name='canonical_centers')
        self.built = True

    @property
    def num_joints(self):
        return len(self.joint_names)

    def canonical_locs(self):
        lefts = tf.convert_to_tensor(self.canonical_lefts)
        centers = tf.convert_to_tensor(self.canonical_centers)
        rights = tf.concat([-lefts[:, :1], lefts[:, 1:]], axis=1)
        centers = tf.concat([tf.zeros_like(centers[:, :1]), centers], axis=1)
        # scatter_nd rather than gather: its gradient is a dense tensor, not IndexedSlices.
        deltas = tf.scatter_nd(
            self._permutation[:, np.newaxis], tf.concat([lefts, rights, centers], axis=0),
            [self.num_joints, 3])
        return (deltas * tf.constant(self.delta_mask[:, np.newaxis])
                + tf.constant(self.initial_positions))

    def call(self, inputs=None):
        """Ignores `inputs` (Keras layers need a call); returns `canonical_locs()`."""
        del inputs
        return self.canonical_locs()

    def compute_output_shape(self, input_shape=None):
        return (self.num_joints, 3)

    def get_config(self):
        return {
            **super().get_config(),
            'joint_names': list(self.joint_names),
            'initial_positions': self.initial_positions.tolist(),
            'max_delta_norm': self.max_delta_norm,
        }
