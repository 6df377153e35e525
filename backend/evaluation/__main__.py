"""``python -m backend.evaluation``: ``animax eval`` without the rest of the command line (whose
network client needs pyzmq), for machines that only evaluate, such as the GPU machines."""

import argparse

from .command import add_eval_arguments, eval_command

parser = argparse.ArgumentParser(prog="python -m backend.evaluation", description=__doc__.split("\n\n")[0])
add_eval_arguments(parser)
eval_command(parser.parse_args())
