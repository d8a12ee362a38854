"""Adaptive frame subsampling for video datasets (PosePile's `AdaptivePoseSampler` rule).

A frame is kept when the pose changed enough since the last KEPT frame: some joint moved by at
least `thresh` (same unit as the poses, e.g. 100 mm for MADS). With `check_validity`, only joints
valid in the current frame are compared, and a frame in which some joint became valid (invalid in
the last kept pose, valid now) is always kept. The first frame is kept iff it has a valid joint.
"""

import numpy as np


def valid_joints(pose):
    """Bool [J]: joints whose coordinates are all finite."""
    return np.all(np.isfinite(pose), axis=-1)


class AdaptivePoseSampler:
    """Stateful per-video sampler; call `should_skip(pose)` once per frame, in frame order.

    Args:
        thresh: minimum displacement of some joint, in the poses' unit, for a frame to be kept.
        check_validity: compare only the joints valid now; keep frames where a joint became valid.
        assume_nan_unchanged: treat invalid joints as not having moved (their last valid position
            is kept in the reference pose); only a joint moving >= thresh triggers a keep.
    """

    def __init__(self, thresh, check_validity=False, assume_nan_unchanged=False):
        thresh = float(thresh)
        if not np.isfinite(thresh) or thresh < 0:
            raise ValueError(f'thresh must be a finite non-negative number, got {thresh}')
        self.thresh = thresh
        self.check_validity = bool(check_validity)
        self.assume_nan_unchanged = bool(assume_nan_unchanged)
        self.prev_pose = None

    def reset(self):
        """Forgets the last kept pose (e.g. before the next video)."""
        self.prev_pose = None

    def should_skip(self, pose):
        """True if this frame should be dropped; if kept (False), it becomes the new reference."""
        # float64 so that e.g. a 100 mm move is exactly 100 and not 99.99999 (threshold is >=)
        pose = np.array(pose, dtype=np.float64)
        if pose.ndim != 2:
            raise ValueError(f'pose must have shape [J, D], got {pose.shape}')
        if self.prev_pose is None:
            self.prev_pose = pose.copy()
            return not np.any(valid_joints(pose))
        if pose.shape != self.prev_pose.shape:
            raise ValueError(
                f'pose shape changed from {self.prev_pose.shape} to {pose.shape} within a sequence')

        if self.check_validity:
            valid_now = valid_joints(pose)
            newly_valid = valid_now & ~valid_joints(self.prev_pose)
            if np.any(newly_valid):
                self._update(pose)
                return False
            compared = valid_now
        else:
            compared = np.ones(pose.shape[0], dtype=bool)

        with np.errstate(invalid='ignore'):
            change = np.linalg.norm(pose[compared] - self.prev_pose[compared], axis=-1)
            if self.assume_nan_unchanged:
                moved = np.any(change >= self.thresh)
            else:
                # a NaN change (joint lost without check_validity) counts as moved, like PosePile
                moved = not np.all(change < self.thresh)
        if moved:
            self._update(pose)
            return False
        return True

    def _update(self, pose):
        if self.assume_nan_unchanged:
            finite = np.isfinite(pose)
            self.prev_pose[finite] = pose[finite]
        else:
            self.prev_pose = pose.copy()
