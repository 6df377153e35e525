"""What every multi-GPU process of the project shares: serving (one worker per GPU), one generation
split over GPUs, data-parallel training. Free of torch and pyzmq, so that any of them may import it."""

import os

# NVLink multicast stays off: on the shared GPU hosts a program using it can take the host's GPUs out
# of service. Set in each process's own environment before NCCL, symmetric memory or NVSHMEM start.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def turn_multicast_off() -> None:
    """Put MULTICAST_OFF into this process's environment, keeping values the user set."""
    for name, value in MULTICAST_OFF.items():
        os.environ.setdefault(name, value)
