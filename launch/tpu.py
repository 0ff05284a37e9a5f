"""Cloud TPU VM launcher for bertjax (run from the repository root; needs gcloud and absl-py).

  python -m launch.tpu COMMAND --name=NAME --zone=ZONE --project=PROJECT [FLAGS] [-- JOB...]

  create  a TPU VM, or with --queued a queued resource (--accelerator_type, --runtime_version,
          --spot); a queued resource is waited for until READY
  setup   copy the working tree to every worker and install the pinned requirements there
  sync    copy the working tree to every worker (after a code change)
  run     start JOB (`-- bertjax.pretrain --config=...`) on every worker at once, each with its own
          log, with --workdir=gs://...; --until_done keeps it going through preemptions
          (re-creating the TPU, resuming from the last checkpoint) until WORKDIR/COMPLETED exists
  logs    the last --lines of every worker's log (--follow to stream)
  status  the TPU's state, the job on each worker, and with --workdir whether the run completed
  stop    stop the job on every worker (TERM, so it can checkpoint; KILL after --stop_grace_s)
  delete  delete the TPU (never the workdir); --yes skips gcloud's confirmation

--dry_run prints the exact commands and runs nothing. Flags may be written with - or _
(--until-done, --dry-run). See docs/tpu.md for the whole path from an empty project.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from bertjax.errors import UserError, user_errors_exit
from launch import gcloud, remote, slices
from launch.ops import Launcher, check_workdir
from launch.runner import Runner
from launch.until_done import Policy, UntilDone

COMMANDS = ("create", "setup", "sync", "run", "logs", "status", "stop", "delete")


def _define(fv: flags.FlagValues) -> None:
    s, b, i, f, m = (flags.DEFINE_string, flags.DEFINE_boolean, flags.DEFINE_integer,
                     flags.DEFINE_float, flags.DEFINE_multi_string)
    s("name", "", "TPU VM (and queued resource) name", flag_values=fv)
    s("zone", "", "zone, e.g. us-central2-b", flag_values=fv)
    s("project", "", "Google Cloud project id", flag_values=fv)
    s("accelerator_type", "", "v4-8, v4-32, v5e-16 (or v5litepod-16), v5p-8, v6e-8, ...",
      flag_values=fv)
    s("runtime_version", "", "TPU software version; default: the one Google lists for JAX on "
      "the accelerator's generation", flag_values=fv)
    b("spot", False, "spot capacity: cheaper, can be preempted at any time", flag_values=fv)
    b("queued", False, "create through a queued resource (waits for capacity)", flag_values=fv)
    b("internal_ip", False, "ssh/scp to internal IPs (from a VM in the same network)",
      flag_values=fv)
    s("workdir", "", "gs:// folder of the run (checkpoints, logs, COMPLETED)", flag_values=fv)
    m("env", [], "KEY=VALUE added to the job's environment (repeatable)", flag_values=fv)
    b("replace", False, "run: stop a job that is still running first", flag_values=fv)
    b("until_done", False, "run: re-create and resume after preemptions until COMPLETED",
      flag_values=fv)
    f("poll_s", 120.0, "seconds between looks at the TPU and the run", flag_values=fv)
    i("max_restarts", 3, "until_done: crash restarts on a healthy TPU before giving up",
      flag_values=fv)
    i("max_failures", 5, "until_done: gcloud failures in a row before giving up", flag_values=fv)
    i("stop_grace_s", 120, "seconds a stopped job gets to checkpoint before it is killed",
      flag_values=fv)
    b("delete_when_done", False, "until_done: delete the TPU once COMPLETED exists",
      flag_values=fv)
    i("lines", 50, "logs: lines per worker", flag_values=fv)
    b("follow", False, "logs: keep streaming", flag_values=fv)
    b("yes", False, "delete: do not ask for confirmation", flag_values=fv)
    b("dry_run", False, "print the exact commands and run nothing", flag_values=fv)


def _normalize(argv: Sequence[str]) -> list[str]:
    """--until-done -> --until_done for the launcher's own flags (not for the job after --)."""
    out, in_job = [], False
    for a in argv:
        if in_job or a == "--":
            in_job = True
        elif a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            a = "--" + name.replace("-", "_") + eq + value
        out.append(a)
    return out


def parse(argv: Sequence[str]) -> tuple[str, flags.FlagValues, list[str]]:
    """(command, flag values, job argv) from the full argv (argv[0] is the program)."""
    fv = flags.FlagValues()
    _define(fv)
    try:
        rest = fv(_normalize(argv))
    except flags.Error as e:
        raise UserError(f"bad command line: {e}") from None
    return (rest[1] if len(rest) > 1 else ""), fv, list(rest[2:])


def create_spec(accelerator_type: str, runtime_version: str, spot: bool) -> gcloud.CreateSpec:
    if not accelerator_type:
        raise UserError("--accelerator_type is required, e.g. v4-8, v4-32, v5e-16, v5p-8")
    try:
        sl = slices.parse_slice(accelerator_type)
    except ValueError as e:
        if runtime_version:  # a type this launcher does not know, passed to gcloud as written
            return gcloud.CreateSpec(accelerator_type, runtime_version, spot)
        raise UserError(f"{e}; or give --runtime_version to pass it to gcloud as written") from None
    return gcloud.CreateSpec(sl.accelerator_type, runtime_version or sl.spec.runtime_version, spot)


def _status(L: Launcher, workdir: str) -> None:
    st = L.state()
    if not L.r.dry_run:
        print(f"{L.t.name}: {st.kind} ({st.detail}), {st.workers} worker(s)")
    if st.kind == "READY" or L.r.dry_run:
        ws = L.workers()
        for w, (state, detail) in sorted((ws or {}).items()):
            print(f"  worker {w}: {state} {detail}".rstrip())
        if ws is None:
            print("  the workers did not answer over ssh")
    if workdir:
        done = L.completed(check_workdir(workdir))
        if not L.r.dry_run:
            print(f"{workdir}/COMPLETED: " + {True: f"yes, step {L.final_step(workdir)}",
                                              False: "not yet", None: "could not be read"}[done])


def usage() -> str:
    fv = flags.FlagValues()
    _define(fv)
    return __doc__ + "\nFlags:\n" + fv.get_help(prefix="  ", include_special_flags=False)


def run(argv: Sequence[str], runner: Runner | None = None) -> int:
    own = list(argv[1:argv.index("--")] if "--" in argv else argv[1:])
    if not own or any(a in ("help", "-h", "--help", "-help", "--helpfull") for a in own):
        print(usage())
        return 0
    command, o, job = parse(argv)
    if command not in COMMANDS:
        raise UserError(f"unknown command {command!r}; use one of {', '.join(COMMANDS)}")
    if job and command != "run":
        raise UserError(f"{command} takes no job after --; only run does")
    runner = runner or Runner(dry_run=o.dry_run)
    target = gcloud.Target(o.name, o.zone, o.project, queued=o.queued, internal_ip=o.internal_ip)
    L = Launcher(target, runner)

    if command == "create":
        L.create(create_spec(o.accelerator_type, o.runtime_version, o.spot), poll_s=o.poll_s)
    elif command == "setup":
        L.setup()
    elif command == "sync":
        L.sync()
    elif command == "run":
        workdir = check_workdir(o.workdir)
        if not job:
            raise UserError("run needs the job after --, e.g. -- bertjax.pretrain "
                            "--config=configs/tpu.py:v4-8 --config.data.train_dir=gs://...")
        job_argv = remote.job_argv(job[0], job[1:], workdir)
        env = remote.job_env(remote.parse_env(o.env))
        if o.until_done:
            policy = Policy(poll_s=o.poll_s, max_restarts=o.max_restarts,
                            max_failures=o.max_failures, stop_grace_s=o.stop_grace_s,
                            delete_when_done=o.delete_when_done)
            spec = create_spec(o.accelerator_type, o.runtime_version, o.spot)
            return UntilDone(L, spec, job_argv, workdir, env, policy).run()
        if o.replace:
            L.stop(o.stop_grace_s)
        L.start(job_argv, workdir, env)
        runner.note(f"started on every worker; follow with: python -m launch.tpu logs --follow "
                    f"--name={o.name} --zone={o.zone} --project={o.project}")
    elif command == "logs":
        L.logs(o.lines, o.follow)
    elif command == "status":
        _status(L, o.workdir)
    elif command == "stop":
        L.stop(o.stop_grace_s)
    elif command == "delete":
        L.delete(quiet=o.yes)
    return 0


@user_errors_exit
def main() -> int:
    try:
        return run(sys.argv)
    except KeyboardInterrupt:
        # Nothing on the TPU depends on this process: a started job keeps running there.
        print("\ninterrupted; whatever was started on the TPU keeps running, and a TPU that exists "
              "is billed (python -m launch.tpu status / delete)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
