import numpy as np
import pytest

from nlf_tf.data.pose_sampler import AdaptivePoseSampler, BufferedAdaptivePoseSampler

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


# ---------------------------------------------------------------------------------------------
# BufferedAdaptivePoseSampler (PosePile's AdaptivePoseSampler2, BEHAVE)

def _kept(sampler, poses):
    return [not sampler.should_skip(p) for p in poses]


def test_buffered_drops_a_return_to_a_recent_pose_where_the_plain_sampler_keeps_it():
    a = BASE
    b = moved(0, [150, 0, 0])           # 150 mm from A
    a_again = moved(0, [0, 30, 0])      # 30 mm from A, 153 mm from B
    c = moved(2, [0, 0, 120])           # 120 mm from A (joint 2), 189 mm from B (joint 0)
    c_near_b = moved(0, [140, 0, 0], c)  # 10 mm from B on joint 0 but joint 2 moved 120
    sequence = [a, b, a_again, c, c_near_b]
    plain = _kept(AdaptivePoseSampler(100, True, True), sequence)
    buffered = _kept(BufferedAdaptivePoseSampler(100, True, True, buffer_size=100), sequence)
    assert plain == [True, True, True, True, True]
    # A again: 30 mm from the kept A -> dropped; C moved >= 100 from both A and B -> kept;
    # the last frame moved >= 100 from A and from C (joint 0) and from B (joint 2) -> kept
    assert buffered == [True, True, False, True, True]


def test_buffered_forgets_poses_older_than_the_buffer():
    poses = [BASE, moved(0, [150, 0, 0]), moved(0, [300, 0, 0]), moved(0, [20, 0, 0])]
    # buffer 2: when the last frame comes, A has been pushed out by B and C -> kept
    assert _kept(BufferedAdaptivePoseSampler(100, True, True, buffer_size=2), poses) == [
        True, True, True, True]
    # buffer 3 still holds A -> the last frame (20 mm from A) is dropped
    assert _kept(BufferedAdaptivePoseSampler(100, True, True, buffer_size=3), poses) == [
        True, True, True, False]


def test_buffered_threshold_inclusive_and_newly_valid_against_the_last_kept_pose():
    sampler = BufferedAdaptivePoseSampler(100, check_validity=True, buffer_size=10)
    start = BASE.copy()
    start[2] = NAN
    assert not sampler.should_skip(start)
    assert not sampler.should_skip(moved(1, [100, 0, 0], start))    # exactly 100 mm: kept
    assert sampler.should_skip(moved(1, [50, 0, 0], start))         # 50 from both kept poses
    assert not sampler.should_skip(moved(1, [100, 0, 0]))           # joint 2 became valid
    # joint 1 lost now: compared joints 0 and 2 did not move w.r.t. the last kept pose
    gone = BASE.copy()
    gone[1] = NAN
    assert sampler.should_skip(gone)
    assert sampler.should_skip(np.full((3, 3), NAN))


def test_buffered_first_frame_and_nan_handling():
    sampler = BufferedAdaptivePoseSampler(100, check_validity=True, buffer_size=5)
    assert sampler.should_skip(np.full((3, 3), NAN)) is True
    # without check_validity a NaN displacement counts as a move (as in the plain sampler)
    sampler = BufferedAdaptivePoseSampler(100, buffer_size=5)
    assert sampler.should_skip(BASE) is False
    gone = BASE.copy()
    gone[1] = NAN
    assert sampler.should_skip(gone) is False
    # with assume_nan_unchanged the lost joint keeps its last position in the buffer
    sampler = BufferedAdaptivePoseSampler(100, assume_nan_unchanged=True, buffer_size=5)
    assert not sampler.should_skip(BASE)
    jumped = moved(0, [150, 0, 0])
    jumped[1] = NAN
    assert not sampler.should_skip(jumped)
    np.testing.assert_array_equal(sampler.kept_poses[-1][1], BASE[1])
    assert sampler.should_skip(moved(0, [150, 0, 40]))  # 40 from the buffered 2nd pose


@pytest.mark.parametrize('check_validity', [False, True])
@pytest.mark.parametrize('assume_nan_unchanged', [False, True])
def test_buffer_size_one_equals_the_plain_sampler(check_validity, assume_nan_unchanged):
    rng = np.random.default_rng(1)
    poses = np.cumsum(rng.normal(0, 30, size=(300, 5, 3)), axis=0)
    poses[rng.random((300, 5)) < 0.1] = NAN
    plain = _kept(AdaptivePoseSampler(100, check_validity, assume_nan_unchanged), poses)
    buffered = _kept(BufferedAdaptivePoseSampler(100, check_validity, assume_nan_unchanged, 1),
                     poses)
    assert plain == buffered
    assert 10 < sum(plain) < 290


def test_buffered_independent_reimplementation_on_random_walk():
    rng = np.random.default_rng(2)
    # a slow random walk with returns: a periodic motion plus noise revisits earlier poses
    t = np.arange(400)[:, None, None]
    poses = 300 * np.sin(t / 15.0 + np.arange(4)[None, :, None]) + rng.normal(0, 20, (400, 4, 3))
    poses[rng.random((400, 4)) < 0.05] = NAN
    buffer_size = 40
    sampler = BufferedAdaptivePoseSampler(100, check_validity=True, assume_nan_unchanged=True,
                                          buffer_size=buffer_size)
    got = _kept(sampler, poses)

    expected, kept = [], []
    for p in poses:
        valid = ~np.isnan(p).any(-1)
        if not kept:
            keep = bool(valid.any())
            kept.append(p.copy())
            expected.append(keep)
            continue
        last = kept[-1]
        if (valid & np.isnan(last).any(-1)).any():
            keep = True
        else:
            keep = True
            any_informative = False
            for ref in kept[-buffer_size:]:
                dists = [np.linalg.norm(p[j] - ref[j]) for j in np.flatnonzero(valid)
                         if not np.isnan(ref[j]).any()]
                if not dists:
                    continue
                any_informative = True
                if max(dists) < 100:
                    keep = False
            keep = keep and any_informative
        if keep:
            new = last.copy()
            new[valid] = p[valid]
            kept.append(new)
        expected.append(keep)
    assert got == expected
    plain = _kept(AdaptivePoseSampler(100, True, True), poses)
    assert sum(got) < sum(plain)  # the buffer drops returns to recent poses


def test_buffered_bad_input():
    with pytest.raises(ValueError, match='buffer_size'):
        BufferedAdaptivePoseSampler(100, buffer_size=0)
    with pytest.raises(ValueError, match='thresh'):
        BufferedAdaptivePoseSampler(np.nan)
    sampler = BufferedAdaptivePoseSampler(100, buffer_size=3)
    with pytest.raises(ValueError, match='shape'):
        sampler.should_skip(np.zeros(3))
    sampler.should_skip(np.zeros((3, 3)))
    with pytest.raises(ValueError, match='shape changed'):
        sampler.should_skip(np.zeros((4, 3)))
    sampler.reset()
    assert sampler.should_skip(np.zeros((4, 3))) is False
