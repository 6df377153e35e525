"""The benchmark's motion metrics on small motions whose answers are known by construction."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animax_addon.job_future import tile_views
from backend.evaluation import motion_metrics as mm
from backend.evaluation.motion_bench import GOALS, REFERENCES, goal_table, summarise, untile_views
from backend.reconstruction.kinematics import resample_positions


def _about_z(degrees) -> np.ndarray:
    """(T, 1, 4) w-first quaternions of one bone turned by ``degrees`` about Z at each frame."""
    return Rotation.from_euler("z", np.asarray(degrees, float)[:, None], degrees=True).as_quat(scalar_first=True)[:, None]


def _body() -> np.ndarray:
    """Rest joints of a small upright body: two feet, hips, head, two hands (Z up, 1 m tall)."""
    return np.array([[-0.1, 0, 0], [0.1, 0, 0], [0, 0, 0.5], [0, 0, 1.0], [-0.3, 0.05, 0.7], [0.3, 0.05, 0.7]])


def test_a_flip_is_counted_and_a_sign_change_is_not():
    rotations = _about_z([0, 10, 20, 80, 85])  # steps 10, 10, 60, 5: one of four turns over 45°
    assert mm.flip_share(rotations) == pytest.approx(0.25)
    same_pose = rotations.copy()
    same_pose[2] *= -1  # q and -q are one rotation
    assert mm.flip_share(same_pose) == pytest.approx(0.25)
    assert mm.rotation_steps_deg(rotations)[:, 0] == pytest.approx([10, 10, 60, 5], abs=1e-6)


def test_steady_turn_has_no_jitter_and_a_shaking_one_has():
    steady = _about_z(np.arange(25) * 5.0)
    shaking = _about_z(np.where(np.arange(25) % 2, 5.0, -5.0))
    fps = 24.0
    assert mm.angular_acceleration(steady, fps) == pytest.approx(0.0, abs=1e-6)
    # 10° one way then back each frame: the velocity swings by 20° x fps each frame
    assert mm.angular_acceleration(shaking, fps) == pytest.approx(20.0 * fps * fps, rel=1e-6)


def test_rotation_range_is_the_largest_angle_from_rest_per_bone():
    one = _about_z([0, 30, 90, 40])
    two = _about_z([0, 0, 10, 0])
    assert mm.rotation_range_deg(np.concatenate([one, two], axis=1)) == pytest.approx(50.0)


def test_still_rig_scores_zero():
    rest = _body()
    joints = np.repeat(rest[None], 10, axis=0)
    rotations = np.tile([1.0, 0, 0, 0], (10, 6, 1))
    scores = mm.motion_scores(rotations, joints, rest, 24.0)
    for key in ("flips", "max_step_deg", "acceleration_deg_s2", "range_deg", "movement", "lift", "turn_deg",
                "travel", "drift"):
        assert scores[key] == pytest.approx(0.0, abs=1e-9), key


def test_a_jump_lifts_and_a_walk_travels_in_body_heights():
    rest = _body()
    up = np.array([0.0, 0.0, 0.0, 0.25, 0.1, 0.0])[:, None, None] * [0, 0, 1]
    jump = rest[None] + up
    assert mm.lift(jump, rest) == pytest.approx(0.25)
    assert mm.travel(jump, rest) == pytest.approx(0.0, abs=1e-12)
    forward = np.linspace(0, -1.5, 8)[:, None, None] * [0, 1, 0]  # 1.5 m forward (-Y) for a 1 m body
    walk = rest[None] + forward
    assert mm.travel(walk, rest) == pytest.approx(1.5)
    assert mm.drift(walk, rest) == pytest.approx(1.5)
    back = rest[None] + np.concatenate([forward, forward[::-1]])
    assert mm.travel(back, rest) == pytest.approx(0.0, abs=1e-12)
    assert mm.drift(back, rest) == pytest.approx(1.5)


def test_turn_adds_up_a_spin_about_any_centre():
    rest = _body() + [2.0, -1.0, 0.0]
    angles = np.linspace(0, 270, 19)  # past 180°: the angle must be unwrapped
    spin = Rotation.from_euler("z", angles[:, None], degrees=True)
    centre = rest.mean(axis=0)
    joints = np.stack([r.apply(rest - centre) + centre + [0.3 * i, 0, 0] for i, r in enumerate(spin)])
    assert mm.turn_deg(joints, rest) == pytest.approx(270.0, abs=1e-6)
    wobble = Rotation.from_euler("z", [[0], [20], [0], [20], [0]], degrees=True)
    joints = np.stack([r.apply(rest - centre) + centre for r in wobble])
    assert mm.turn_deg(joints, rest) == pytest.approx(80.0, abs=1e-6)  # turned back and forth: it adds up


def test_body_height_of_a_rig_lying_flat_is_its_length():
    lying = np.array([[0, 0, 0], [0, 2.0, 0], [0, 2.0, 0.1]])
    assert mm.body_height(lying) == pytest.approx(2.0)


def test_still_rig_has_no_prompt_effect():
    rest = _body()
    still = np.repeat(rest[None], 6, axis=0)
    motions = {(p, s): still for p in ("jumps", "waves") for s in (0, 1)}
    effect = mm.prompt_and_seed_effect(motions, rest)
    assert effect["across_prompts"] == 0.0 and effect["across_seeds"] == 0.0
    assert effect["ratio"] is None


def test_prompt_effect_tells_a_prompt_follower_from_a_seed_follower():
    rest = _body()
    rng = np.random.default_rng(0)
    by_prompt = {p: rest[None] + rng.normal(0, 0.2, (6, 6, 3)) for p in ("jumps", "waves", "nods")}
    by_seed = {s: rest[None] + rng.normal(0, 0.2, (6, 6, 3)) for s in (0, 1)}
    small = {k: rng.normal(0, 0.01, (6, 6, 3)) for k in ((p, s) for p in by_prompt for s in by_seed)}
    follower = {(p, s): by_prompt[p] + small[p, s] for p, s in small}
    ignorer = {(p, s): by_seed[s] + small[p, s] for p, s in small}
    assert mm.prompt_and_seed_effect(follower, rest)["ratio"] > 5
    assert mm.prompt_and_seed_effect(ignorer, rest)["ratio"] < 0.2


def test_resampled_joints_keep_the_duration():
    joints = np.linspace(0, 1, 25)[:, None, None] * np.ones((1, 2, 3))  # 1 s at 24 fps, linear
    at_16 = resample_positions(joints, 24.0, 16.0)
    assert at_16.shape == (17, 2, 3)
    assert at_16[:, 0, 0] == pytest.approx(np.linspace(0, 1, 17))


def _run(motion, read_as, flips=0.0, lift=0.0, drift=0.0, seconds=30.0, jitter=1.0):
    return {"motion": motion, "read_as": read_as, "flips": flips, "lift": lift, "drift": drift, "seconds": seconds,
            "jitter": jitter}


def test_summary_and_goals_from_runs():
    results = [
        {"rig": "procedural:fox", "group": "procedural", "effect": {"ratio": 3.0},
         "runs": [_run("jump", "jump", lift=0.1), _run("jump", "nod", lift=0.01) | {"drawn_read_as": "jump"},
                  _run("spin", "spin", drift=1.5)]},
        {"rig": "rigify:basic_human", "group": "rigify", "effect": {"ratio": 1.0},
         "runs": [_run("walk", "walk", flips=0.06, jitter=5.0) | {"drawn_read_as": "bow"},
                  _run("walk", "bow", drift=3.0) | {"drawn_read_as": "walk"}]},
        {"rig": "rigify:human", "group": "rigify", "refused": "too many bones"},
    ]
    summary = summarise(results)
    assert summary["refused"] == ["rigify:human"] and summary["runs"] == 5
    assert summary["flips"] == pytest.approx(0.012)
    assert summary["accuracy_procedural"] == pytest.approx(2 / 3)
    assert summary["accuracy_rigify"] == pytest.approx(0.5)
    assert summary["jump_lift"] == pytest.approx(0.5)
    assert summary["drift"] == 1  # the spin; a walk may travel
    assert summary["prompt_effect"] == pytest.approx(2.0)
    # the creature drawn for the Rigify runs, before carrying; the procedural run's is not theirs
    assert summary["accuracy_rigify_drawn"] == pytest.approx(0.5)
    table = goal_table(summary)
    assert "| prompt effect / seed effect (mean over rigs) | >= 2 | 2.00 | yes |" in table
    assert "| flips (share of bone steps > 45°) | < 1% | 1.2% | no |" in table
    assert len(table.splitlines()) == 2 + sum(key in summary for key in (*GOALS, *REFERENCES))
    assert "on the creature drawn for them (before carrying) | | 50.0% | |" in table


def test_untiled_previews_are_the_views_again():
    video = np.random.default_rng(0).integers(0, 255, (4, 3, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(untile_views(tile_views(video), 4), video)
