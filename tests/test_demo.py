"""``animax demo``: the README's main job, run as a user runs it (its own process: it installs the
extension into a temporary user directory, which bpy reads at import)."""

import subprocess
import sys
from pathlib import Path

import bpy
import numpy as np
from bpy_extras.anim_utils import action_get_channelbag_for_slot

from animax_addon.snapshot import participating_bones

ROOT = Path(__file__).resolve().parent.parent


def test_demo_writes_an_animated_blend_and_a_preview_video(tmp_path):
    out = tmp_path / "x.blend"
    done = subprocess.run([sys.executable, "-m", "backend.cli", "demo", "--prompt", "the person waves", "--out", str(out),
                           "--steps", "2"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "animated 'Biped'" in done.stdout and "Action 'AnimaX the person waves'" in done.stdout
    assert "in its rest pose" not in done.stdout  # a standing person: nothing told about its rest

    bpy.ops.wm.open_mainfile(filepath=str(out))
    (obj,) = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    action = obj.animation_data.action
    assert action.name == "AnimaX the person waves"
    bag = action_get_channelbag_for_slot(action, obj.animation_data.action_slot)
    first, last = action.frame_range
    frames = int(last - first) + 1
    assert frames == 25  # the panel's default: one second at 24 fps, the model's whole clip
    assert (bpy.context.scene.frame_start, bpy.context.scene.frame_end) == (1, 250)  # the scene's range untouched
    animated = participating_bones(obj)  # the sample's deform bones
    assert len(bag.fcurves) == 4 * len(animated) + 3  # quaternions of every animated bone, the root's location
    assert {len(c.keyframe_points) for c in bag.fcurves} == {frames}
    assert f"{frames} frames, {frames * len(bag.fcurves)} keys" in done.stdout
    assert not [o for o in bpy.data.objects if o.type == "CAMERA"]  # the preview camera stays out of the file

    clip = bpy.data.movieclips.load(str(tmp_path / "x.mp4"))
    assert clip.frame_duration == frames and tuple(clip.size) == (256, 256)
    bpy.ops.wm.read_homefile(use_empty=True)


def _demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend.cli", "demo", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_bad_demo_arguments_get_one_sentence_before_blender_starts(tmp_path):
    cases = {
        ("--prompt", "  ", "--out", str(tmp_path / "a.blend")): "--prompt is empty",
        ("--blend", str(ROOT / "README.md"), "--prompt", "x", "--out", str(tmp_path / "a.blend")): "is not a .blend file",
        ("--prompt", "x", "--out", str(tmp_path / "a.txt")): "--out must be a .blend file",
        ("--prompt", "x", "--out", str(tmp_path / "a.blend"), "--collection", "Body"): "--collection needs --bones",
        ("--blend", str(ROOT / "README.md"), "--sample", "quadruped", "--prompt", "x", "--out", str(tmp_path / "a.blend")):
            "--sample builds a creature instead of opening --blend",
    }
    for args, sentence in cases.items():
        done = _demo(*args)
        assert done.returncode == 2, args
        assert sentence in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Installed" not in done.stdout  # refused before the extension was built and installed


def test_a_character_lying_down_is_told_before_the_job_which_still_runs(tmp_path):
    from backend.data.blender_build import build_creature
    from backend.data.rig_world import FAMILIES

    bpy.ops.wm.read_factory_settings(use_empty=True)
    obj = build_creature(FAMILIES["biped"](np.random.default_rng(3)), "Hero")
    obj.rotation_euler = (-np.pi / 2, 0.0, 0.0)  # modelled lying on its back: the turn applied to its data
    for other in bpy.context.scene.objects:
        other.select_set(True)
    bpy.ops.object.transform_apply(location=False, rotation=True, scale=False)
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "lying.blend"))
    bpy.ops.wm.read_homefile(use_empty=True)

    done = subprocess.run([sys.executable, "-m", "backend.cli", "demo", "--blend", str(tmp_path / "lying.blend"),
                           "--prompt", "the person jumps", "--out", str(tmp_path / "x.blend"), "--steps", "1"],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    told = done.stdout.index("Warning: 'Hero' lies on its back in its rest pose and in the scene")
    assert "turn the armature object (with its mesh) 90° about the scene's X axis" in done.stdout[told:]
    assert told < done.stdout.index("AnimaX wrote 'AnimaX the person jumps'")  # before the job's outcome
