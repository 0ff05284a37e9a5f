"""The shell commands the launcher runs on every worker, as strings for `gcloud ... --command`.

Layout on each worker (paths relative to the remote home; `~` is expanded by the remote shell):
the source tree in ~/bertjax (replaced whole by every sync), the venv in ~/bertjax-venv (kept
across syncs), per-worker job logs in ~/bertjax-logs. Values that come from the user are quoted.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

from bertjax.errors import UserError

SRC = "~/bertjax"
VENV = "~/bertjax-venv"
LOGDIR = "~/bertjax-logs"
TARBALL = "/tmp/bertjax-src.tar.gz"
WORKER_SH = "bash launch/worker.sh"
LOG_SUBDIR = "launch-logs"

# What every process of a multi-host job needs in its environment.
JOB_ENV: tuple[tuple[str, str], ...] = (
    # Listing the platforms makes JAX fail loudly on a worker whose TPU runtime did not come up,
    # instead of falling back to CPU and leaving the other hosts waiting at start-up.
    ("JAX_PLATFORMS", "tpu,cpu"),
    # Per-worker logs are read while the job runs.
    ("PYTHONUNBUFFERED", "1"),
    # TensorFlow is only the input pipeline; its C++ start-up chatter hides the first real error.
    ("TF_CPP_MIN_LOG_LEVEL", "2"),
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """--env=KEY=VALUE flags to a dict; later ones win."""
    out: dict[str, str] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not _ENV_NAME.fullmatch(key):
            raise UserError(
                f"--env={p!r} is not KEY=VALUE; write e.g. --env=TPU_STDERR_LOG_LEVEL=0")
        out[key] = value
    return out


def job_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(JOB_ENV)
    env.update(extra or {})
    return env


def sync(sync_id: str, tarball: str = TARBALL) -> str:
    """Unpacks the uploaded tarball into a fresh tree, so files deleted locally vanish remotely too.
    The old tree is removed only once the new one is complete."""
    new = f"{SRC}.incoming"
    tarball = shlex.quote(tarball)
    return " && ".join([
        f"rm -rf {new}", f"mkdir -p {new}", f"tar -xzf {tarball} -C {new}",
        f"echo {shlex.quote(sync_id)} > {new}/.launch-sync",
        f"rm -rf {SRC}", f"mv {new} {SRC}", f"rm -f {tarball}",
        f'echo "bertjax-sync $(hostname) {shlex.quote(sync_id)}"',
    ])


def setup() -> str:
    return f"cd {SRC} && {WORKER_SH} setup requirements.txt {VENV}"


def job_argv(module: str, args: Sequence[str], workdir: str) -> list[str]:
    """The job each worker runs. The launcher owns --workdir: it is where it looks for COMPLETED."""
    if not re.fullmatch(r"bertjax(\.[A-Za-z_][A-Za-z0-9_]*)+", module or ""):
        raise UserError(
            f"job module {module!r} is not a bertjax entrypoint; put it after --, "
            "e.g. -- bertjax.pretrain --config=configs/tpu.py:v4-8")
    for a in args:
        if a == "--workdir" or a.startswith("--workdir="):
            raise UserError(
                "give the workdir once, as the launcher's --workdir (it adds it to the job); "
                f"remove {a!r} from the job arguments")
    return [f"{VENV}/bin/python", "-m", module, *args, f"--workdir={workdir}"]


def start(job: Sequence[str], workdir: str, env: Mapping[str, str]) -> str:
    """Starts `job` under nohup on each worker with its own log, copied to WORKDIR/launch-logs."""
    assignments = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    log_url = f"{workdir.rstrip('/')}/{LOG_SUBDIR}"
    # job[0] is the venv python: a constant path whose `~` the remote shell must expand.
    quoted = [job[0], *(shlex.quote(a) for a in job[1:])]
    return (f"cd {SRC} && env {' '.join(assignments)} {WORKER_SH} start {LOGDIR} "
            f"{shlex.quote(log_url)} -- {' '.join(quoted)}")


def stop(grace_s: int) -> str:
    return f"cd {SRC} && {WORKER_SH} stop {LOGDIR} {int(grace_s)}"


def alive() -> str:
    # A worker without the tree (a VM re-created outside the launcher) answers "missing".
    return (f"if [ -f {SRC}/launch/worker.sh ]; then cd {SRC} && {WORKER_SH} alive {LOGDIR}; "
            'else echo "bertjax-worker $(hostname) missing"; fi')


def logs(lines: int, follow: bool) -> str:
    return f"cd {SRC} && {WORKER_SH} logs {LOGDIR} {int(lines)}" + (" follow" if follow else "")


_ALIVE_LINE = re.compile(r"bertjax-worker (\S+) (running|exited|none|missing)\b ?(.*)")


def parse_alive(text: str) -> dict[str, tuple[str, str]]:
    """worker id -> (state, detail) from the combined output of `alive` on all workers."""
    out = {}
    for line in text.splitlines():
        m = _ALIVE_LINE.search(line)
        if m:
            out[m.group(1)] = (m.group(2), m.group(3).strip())
    return out
