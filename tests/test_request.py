"""The typed request: the wire body it writes is docs/protocol.md's ``submit``, and it reads back
as it was sent."""

import numpy as np

from animax_addon.core.protocol import MessageType, blob_png, decode, encode
from animax_addon.core.request import Options, Request
from test_worker import CAMERAS, RIG, TEMPLATES

OPTIONS = Options(steps=4, guidance=3.0, seed=7, frames=5, fps=24.0, outputs=("pose", "rgb"), variations=3)


def test_the_message_is_the_protocols_submit():
    message = Request.from_images("the fox jumps", RIG, CAMERAS, TEMPLATES, OPTIONS).to_message("j1")
    assert message.type == MessageType.SUBMIT and message.job == "j1"
    assert message.body == {"prompt": "the fox jumps", "rig": RIG, "cameras": CAMERAS,
                            "options": {"steps": 4, "guidance": 3.0, "seed": 7, "frames": 5, "fps": 24.0,
                                        "outputs": ["pose", "rgb"], "variations": 3},
                            "templates": [0, 1, 2, 3]}
    assert all(np.array_equal(blob_png(blob), image) for blob, image in zip(message.blobs, TEMPLATES, strict=True))


def test_a_request_reads_back_as_sent():
    sent = Request.from_images("the fox jumps", RIG, CAMERAS, TEMPLATES, OPTIONS)
    received = Request.from_message(decode(encode(sent.to_message("j1"))))
    assert received == sent


def test_options_from_json_take_their_types():
    options = Options.from_dict({"steps": 2, "guidance": 3, "seed": 0, "frames": 5, "fps": 24, "outputs": ["pose"],
                                 "variations": 1})
    assert options == Options(steps=2, guidance=3.0, seed=0, frames=5, fps=24.0, outputs=("pose",))
    assert isinstance(options.guidance, float) and isinstance(options.fps, float)


def test_each_variation_has_the_next_seed():
    assert OPTIONS.seeds == [7, 8, 9]
