"""bertjax: BERT-family encoders in JAX/Flax NNX, TPU-first."""
import glob as _glob
import os as _os

__version__ = "0.1.0"


def _no_tpu_here() -> bool:
    # TPU VMs expose their chips as /dev/accel* (v4, v5p) or VFIO devices (v5e, v6e).
    return not (_glob.glob("/dev/accel*") or _glob.glob("/dev/vfio/[0-9]*"))


if _no_tpu_here():
    # With no chips, libtpu is here only to compile for TPU topologies ahead of time (bertjax plan,
    # the tests). Without these it warns about missing TPU VM metadata at every start, and lets only
    # one process on the host load it (a lock meant for chips, which have one owner).
    _os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    _os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    _os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    # Those stand-ins make this machine look like a TPU VM to bertjax.train.distributed, which would
    # then try to join a TPU slice (and fail) in every pretrain and finetune; with no chips there is
    # no slice to join.
    _os.environ.setdefault("BERTJAX_SINGLE_PROCESS", "1")
