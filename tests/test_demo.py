"""``animax demo``: the README's main job, run as a user runs it (its own process: it installs the
extension into a temporary user directory, which bpy reads at import)."""

import subprocess
import sys
from pathlib import Path

import bpy
from bpy_extras.anim_utils import action_get_channelbag_for_slot

ROOT = Path(__file__).resolve().parent.parent


def test_demo_writes_an_animated_blend_and_a_preview_video(tmp_path):
    out = tmp_path / "x.blend"
    done = subprocess.run([sys.executable, "-m", "backend.cli", "demo", "--prompt", "the fox jumps", "--out", str(out),
                           "--steps", "2"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Action 'AnimaX the fox jumps'" in done.stdout

    bpy.ops.wm.open_mainfile(filepath=str(out))
    (obj,) = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    action = obj.animation_data.action
    assert action.name == "AnimaX the fox jumps"
    bag = action_get_channelbag_for_slot(action, obj.animation_data.action_slot)
    scene = bpy.context.scene
    frames = scene.frame_end - scene.frame_start + 1
    deform = [b for b in obj.data.bones if b.use_deform]
    assert len(bag.fcurves) == 4 * len(deform) + 3  # quaternions of every deform bone, the root's location
    assert {len(c.keyframe_points) for c in bag.fcurves} == {frames}
    assert f"{frames} frames, {frames * len(bag.fcurves)} keys" in done.stdout
    assert not [o for o in bpy.data.objects if o.type == "CAMERA"]  # the preview camera stays out of the file

    clip = bpy.data.movieclips.load(str(tmp_path / "x.mp4"))
    assert clip.frame_duration == frames and tuple(clip.size) == (256, 256)
    bpy.ops.wm.read_homefile(use_empty=True)
