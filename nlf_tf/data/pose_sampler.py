"""Adaptive frame subsampling for video datasets (PosePile's `AdaptivePoseSampler` rules).

`AdaptivePoseSampler`: a frame is kept when the pose changed enough since the last KEPT frame:
some joint moved by at least `thresh` (same unit as the poses, e.g. 100 mm for MADS). With
`check_validity`, only joints valid in the current frame are compared, and a frame in which some
joint became valid (invalid in the last kept pose, valid now) is always kept. The first frame is
kept iff it has a valid joint.

`BufferedAdaptivePoseSampler` (PosePile's `AdaptivePoseSampler2`, used for BEHAVE): the same, but
the frame is compared with EACH of the last `buffer_size` kept poses and kept only if, against
every one of them, some joint moved >= `thresh`. A person returning to a recent pose is therefore
dropped, which the plain sampler would keep. With `buffer_size=1` both samplers agree.
"""

import collections

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


class BufferedAdaptivePoseSampler:
    """Stateful sampler comparing each frame with the last `buffer_size` kept poses.

    Call `should_skip(pose)` once per frame, in frame order (PosePile creates one per BEHAVE
    sequence). Arguments as for `AdaptivePoseSampler`, plus:
        buffer_size: how many of the most recently kept poses a new frame must differ from.

    Rules (those of PosePile's `AdaptivePoseSampler2`): the first frame is kept iff it has a valid
    joint (it enters the buffer either way). With `check_validity`, a frame where some joint is
    valid now but was invalid in the LAST kept pose is kept; otherwise only the joints valid now
    are compared. Per kept pose, the frame "moved" if some compared joint moved >= thresh:
      * `assume_nan_unchanged`: joints whose displacement is NaN are ignored (and kept poses whose
        displacements are all NaN are ignored); a buffered pose stores, for a joint invalid in its
        frame, the joint's position in the previously buffered pose;
      * otherwise a NaN displacement counts as a move.
    The frame is kept iff it moved with respect to every buffered pose.
    Unlike PosePile (float32 ring buffer) the poses are kept in float64, so a move of exactly
    `thresh` is always >= thresh.
    """

    def __init__(self, thresh, check_validity=False, assume_nan_unchanged=False, buffer_size=1):
        thresh = float(thresh)
        if not np.isfinite(thresh) or thresh < 0:
            raise ValueError(f'thresh must be a finite non-negative number, got {thresh}')
        if isinstance(buffer_size, bool) or int(buffer_size) != buffer_size or buffer_size < 1:
            raise ValueError(f'buffer_size must be a positive integer, got {buffer_size!r}')
        self.thresh = thresh
        self.check_validity = bool(check_validity)
        self.assume_nan_unchanged = bool(assume_nan_unchanged)
        self.buffer_size = int(buffer_size)
        self.kept_poses = collections.deque(maxlen=self.buffer_size)

    def reset(self):
        """Forgets all kept poses (e.g. before the next sequence)."""
        self.kept_poses.clear()

    def should_skip(self, pose):
        """True if this frame should be dropped; if kept (False), it enters the buffer."""
        pose = np.array(pose, dtype=np.float64)
        if pose.ndim != 2:
            raise ValueError(f'pose must have shape [J, D], got {pose.shape}')
        if not self.kept_poses:
            self._add(pose)
            return not np.any(valid_joints(pose))
        last = self.kept_poses[-1]
        if pose.shape != last.shape:
            raise ValueError(
                f'pose shape changed from {last.shape} to {pose.shape} within a sequence')

        if self.check_validity:
            valid_now = valid_joints(pose)
            if np.any(valid_now & ~valid_joints(last)):
                self._add(pose)
                return False
            compared = valid_now
        else:
            compared = np.ones(pose.shape[0], dtype=bool)

        refs = np.stack(self.kept_poses)[:, compared]  # [B, Jc, D]
        with np.errstate(invalid='ignore'):
            change = np.linalg.norm(pose[compared] - refs, axis=-1)  # [B, Jc]
            if self.assume_nan_unchanged:
                informative = np.any(np.isfinite(change), axis=1)
                largest = np.max(np.where(np.isfinite(change), change, -np.inf), axis=1)
                moved = bool(np.any(informative)) and bool(
                    np.all(largest[informative] >= self.thresh))
            else:
                # a buffered pose is "the same" if every compared joint moved < thresh (a NaN
                # displacement is not < thresh, i.e. counts as a move)
                moved = not np.any(np.all(change < self.thresh, axis=1))
        if moved:
            self._add(pose)
            return False
        return True

    def _add(self, pose):
        if self.assume_nan_unchanged:
            stored = (self.kept_poses[-1].copy() if self.kept_poses
                      else np.full_like(pose, np.nan))
            finite = np.isfinite(pose)
            stored[finite] = pose[finite]
        else:
            stored = pose.copy()
        self.kept_poses.append(stored)
