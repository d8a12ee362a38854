import numpy as np
import pytest

from nlf_tf.data.pose_sampler import AdaptivePoseSampler

NAN = np.nan


def pose(*joints):
    return np.array(joints, dtype=np.float64)


BASE = pose([0, 0, 2000], [100, 50, 2000], [-100, 50, 2000])


def moved(joint, delta, base=BASE):
    p = base.copy()
    p[joint] += delta
    return p


def test_first_frame_kept_iff_it_has_a_valid_joint():
    assert AdaptivePoseSampler(100, check_validity=True).should_skip(BASE) is False
    assert AdaptivePoseSampler(100, check_validity=True).should_skip(
        np.full((3, 3), NAN)) is True


def test_threshold_is_inclusive_100mm_kept_99mm_dropped():
    sampler = AdaptivePoseSampler(100, check_validity=True)
    assert not sampler.should_skip(BASE)
    assert sampler.should_skip(moved(1, [99, 0, 0]))     # 99 mm: dropped
    assert sampler.should_skip(moved(2, [0, 0, -99.9]))  # still below
    assert not sampler.should_skip(moved(1, [100, 0, 0]))  # exactly 100 mm: kept
    # the reference is now the kept pose: a further 60 mm on the same joint (total 160 mm from
    # BASE but 60 from the reference) is dropped, 100 more is kept
    ref = moved(1, [100, 0, 0])
    assert sampler.should_skip(moved(1, [0, 60, 0], ref))
    assert not sampler.should_skip(moved(1, [0, 0, 100], ref))


def test_diagonal_move_uses_euclidean_distance():
    sampler = AdaptivePoseSampler(100, check_validity=True)
    sampler.should_skip(BASE)
    assert sampler.should_skip(moved(0, [70, 70, 0]))      # 98.99 mm
    assert not sampler.should_skip(moved(0, [60, 80, 0]))  # 100 mm


def test_drift_accumulates_against_the_last_kept_pose():
    sampler = AdaptivePoseSampler(100, check_validity=True)
    kept = [not sampler.should_skip(moved(0, [30.0 * i, 0, 0])) for i in range(8)]
    # reference at 0 -> frames 1..3 (30..90 mm) dropped, frame 4 (120 mm) kept; next reference
    # 120 -> 150, 180 dropped, 210 dropped (90), 240 (120) ... only 7 frames: 210 is frame 7
    assert kept == [True, False, False, False, True, False, False, False]


def test_newly_valid_joint_keeps_frame_and_vanished_joint_does_not():
    sampler = AdaptivePoseSampler(100, check_validity=True)
    start = BASE.copy()
    start[2] = NAN
    assert not sampler.should_skip(start)
    # joint 2 becomes valid (no motion otherwise) -> kept
    assert not sampler.should_skip(BASE)
    # joint 1 vanishes, the others did not move -> dropped (check_validity ignores it)
    gone = BASE.copy()
    gone[1] = NAN
    assert sampler.should_skip(gone)
    # it comes back at the same place: newly valid w.r.t. the last KEPT pose? No: the last kept
    # pose (BASE) has it valid, so this frame is dropped
    assert sampler.should_skip(BASE)
    # all joints invalid -> dropped
    assert sampler.should_skip(np.full((3, 3), NAN))


def test_without_check_validity_a_vanished_joint_counts_as_change():
    sampler = AdaptivePoseSampler(100, check_validity=False)
    assert not sampler.should_skip(BASE)
    gone = BASE.copy()
    gone[1] = NAN
    assert not sampler.should_skip(gone)


def test_assume_nan_unchanged_keeps_last_valid_position():
    sampler = AdaptivePoseSampler(100, assume_nan_unchanged=True)
    assert not sampler.should_skip(BASE)
    gone = moved(0, [150, 0, 0])
    gone[1] = NAN
    assert not sampler.should_skip(gone)      # joint 0 moved 150
    # joint 1 reappears 50 mm from its last valid position -> not a change
    assert sampler.should_skip(moved(1, [50, 0, 0], moved(0, [150, 0, 0])))


def test_independent_reimplementation_on_random_walk():
    rng = np.random.default_rng(0)
    poses = np.cumsum(rng.normal(0, 30, size=(200, 5, 3)), axis=0)
    poses[rng.random((200, 5)) < 0.1] = NAN
    sampler = AdaptivePoseSampler(100, check_validity=True)
    got = [not sampler.should_skip(p) for p in poses]

    expected, ref = [], None
    for p in poses:
        valid = ~np.isnan(p).any(-1)
        if ref is None:
            keep = bool(valid.any())
            ref = p.copy()
        elif (valid & np.isnan(ref).any(-1)).any():
            keep = True
        else:
            keep = bool(valid.any()) and max(
                np.linalg.norm(p[j] - ref[j]) for j in np.flatnonzero(valid)) >= 100
        if keep:
            ref = p.copy()
        expected.append(keep)
    assert got == expected
    assert 10 < sum(got) < 190


def test_bad_input():
    with pytest.raises(ValueError, match='thresh'):
        AdaptivePoseSampler(-1)
    sampler = AdaptivePoseSampler(100)
    with pytest.raises(ValueError, match='shape'):
        sampler.should_skip(np.zeros(3))
    sampler.should_skip(np.zeros((3, 3)))
    with pytest.raises(ValueError, match='shape changed'):
        sampler.should_skip(np.zeros((4, 3)))
