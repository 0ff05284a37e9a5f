"""The Cloud TPU launcher, without a cloud: dry-run command lines, the until-done loop against a
simulated TPU, the worker script run locally, and the TPU recipe config."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertjax.errors import UserError
from launch import gcloud, ops, packing, remote, slices, tpu
from launch.runner import Result, Runner

ROOT = Path(__file__).resolve().parent.parent
NAME, ZONE, PROJECT = "bert-test", "us-central2-b", "my-project"
WORKDIR = "gs://my-bucket/runs/base"
WHERE = [f"--name={NAME}", f"--zone={ZONE}", f"--project={PROJECT}"]
JOB = ["--", "bertjax.pretrain", "--config=configs/tpu.py:v4-32",
       "--config.data.train_dir=gs://my-bucket/data/train"]


def dry(*args: str) -> list[list[str]]:
    """Runs the CLI in-process under --dry_run; returns the printed commands as argv lists."""
    lines: list[str] = []
    runner = Runner(dry_run=True, echo=lines.append)
    args = list(args)
    at = args.index("--") if "--" in args else len(args)
    assert tpu.run(["launch.tpu", *args[:at], "--dry_run", *args[at:]], runner=runner) == 0
    return [shlex.split(ln) for ln in lines if not ln.startswith("#")]


def remote_command(argv: list[str]) -> str:
    return next(a.split("=", 1)[1] for a in argv if a.startswith("--command="))


def touches_workers(argv: list[str]) -> bool:
    return argv[:4] == gcloud.TPU_VM and argv[4] in ("ssh", "scp")


# -- accelerator names -----------------------------------------------------------------------------
@pytest.mark.parametrize("name, gcloud_type, chips, vms", [
    ("v4-8", "v4-8", 4, 1), ("v4-32", "v4-32", 16, 4), ("v5e-8", "v5litepod-8", 8, 1),
    ("v5e-16", "v5litepod-16", 16, 4), ("v5litepod-16", "v5litepod-16", 16, 4),
    ("v5p-8", "v5p-8", 4, 1), ("v6e-8", "v6e-8", 8, 1),
])
def test_slices(name, gcloud_type, chips, vms):
    s = slices.parse_slice(name)
    assert (s.accelerator_type, s.chips, s.vms) == (gcloud_type, chips, vms)
    assert s.chips_per_vm * s.vms == s.chips


@pytest.mark.parametrize("bad", ["v4-7", "v9-8", "tpu", "v5e-0", ""])
def test_slices_refuse_unknown(bad):
    with pytest.raises(ValueError, match="slice"):
        slices.parse_slice(bad)


# -- dry-run command lines -------------------------------------------------------------------------
def test_every_command_that_touches_workers_targets_all_of_them():
    cmds = []
    for command, extra in [("setup", []), ("sync", []), ("logs", ["--follow"]), ("stop", []),
                           ("status", [f"--workdir={WORKDIR}"]),
                           ("run", [f"--workdir={WORKDIR}", *JOB]),
                           ("run", [f"--workdir={WORKDIR}", "--replace", *JOB]),
                           ("run", [f"--workdir={WORKDIR}", "--until_done",
                                    "--accelerator_type=v4-32", *JOB])]:
        cmds += dry(command, *WHERE, *extra)
    worker_cmds = [c for c in cmds if touches_workers(c)]
    assert {c[4] for c in worker_cmds} == {"ssh", "scp"}
    for c in worker_cmds:
        assert "--worker=all" in c, shlex.join(c)
    for c in cmds:
        if c[:2] == ["gcloud", "compute"]:
            assert f"--zone={ZONE}" in c and f"--project={PROJECT}" in c, shlex.join(c)


@pytest.mark.parametrize("accel, runtime, gcloud_type, default_runtime", [
    ("v4-8", "", "v4-8", "tpu-ubuntu2204-base"),
    ("v5e-16", "", "v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "my-runtime", "v5p-8", "my-runtime"),
    ("v3-8", "tpu-vm-base", "v3-8", "tpu-vm-base"),  # unknown to the launcher: passed as written
])
def test_create_passes_zone_project_accelerator_and_runtime(accel, runtime, gcloud_type,
                                                            default_runtime):
    extra = [f"--accelerator_type={accel}"] + ([f"--runtime_version={runtime}"] if runtime else [])
    (plain,) = dry("create", *WHERE, *extra)
    assert plain == [*gcloud.TPU_VM, "create", NAME, f"--version={default_runtime}",
                     f"--accelerator-type={gcloud_type}", f"--scopes={gcloud.CLOUD_PLATFORM_SCOPE}",
                     f"--zone={ZONE}", f"--project={PROJECT}"]
    queued = dry("create", *WHERE, *extra, "--queued", "--spot")
    assert queued[0][:6] == [*gcloud.QUEUED, "create", NAME]
    for flag in [f"--node-id={NAME}", f"--runtime-version={default_runtime}",
                 f"--accelerator-type={gcloud_type}", "--spot", f"--zone={ZONE}",
                 f"--project={PROJECT}"]:
        assert flag in queued[0]
    # A queued resource is waited for: the create is followed by a describe.
    assert queued[1][:5] == [*gcloud.QUEUED, "describe"]


def test_hyphenated_flags_are_accepted():
    assert dry("create", *WHERE, "--accelerator-type=v4-8") == dry(
        "create", *WHERE, "--accelerator_type=v4-8")


def test_run_exports_what_multi_host_startup_needs():
    (start,) = dry("run", *WHERE, f"--workdir={WORKDIR}", "--env=TPU_STDERR_LOG_LEVEL=0", *JOB)
    assert touches_workers(start) and "--worker=all" in start
    words = shlex.split(remote_command(start))
    env_at = words.index("env")
    assignments = words[env_at + 1:words.index("bash")]
    assert {"JAX_PLATFORMS=tpu,cpu", "PYTHONUNBUFFERED=1", "TPU_STDERR_LOG_LEVEL=0"} <= set(
        assignments)
    # One detached job per worker with its own log, copied to the workdir.
    assert words[words.index("bash") + 1:words.index("bash") + 5] == [
        "launch/worker.sh", "start", remote.LOGDIR, f"{WORKDIR}/{remote.LOG_SUBDIR}"]
    job = words[words.index("--") + 1:]
    assert job == [f"{remote.VENV}/bin/python", "-m", "bertjax.pretrain", *JOB[2:],
                   f"--workdir={WORKDIR}"]


def test_run_replace_stops_first():
    stop, start = dry("run", *WHERE, f"--workdir={WORKDIR}", "--replace", *JOB)
    assert "worker.sh stop" in remote_command(stop)
    assert "worker.sh start" in remote_command(start)


def test_sync_copies_one_archive_then_unpacks_a_fresh_tree():
    scp, unpack = dry("sync", *WHERE)
    assert scp[4] == "scp" and scp[5] == str(packing.TARBALL)
    assert scp[6] == f"{NAME}:{remote.TARBALL}"
    cmd = remote_command(unpack)
    assert cmd.index("tar -xzf") < cmd.index(f"rm -rf {remote.SRC} ") < cmd.index("mv ")


def test_delete_asks_unless_yes_and_never_touches_storage():
    (ask,) = dry("delete", *WHERE)
    (yes,) = dry("delete", *WHERE, "--yes", "--queued")
    assert "--quiet" not in ask and ask[:6] == [*gcloud.TPU_VM, "delete", NAME]
    assert "--quiet" in yes and "--force" in yes and yes[:6] == [*gcloud.QUEUED, "delete", NAME]


@pytest.mark.parametrize("args, message", [
    (["run", "--name=x1", f"--zone={ZONE}", f"--project={PROJECT}", "--workdir=/tmp/run", *JOB],
     "GCS bucket"),
    (["run", *WHERE, f"--workdir={WORKDIR}", "--", "bertjax.pretrain", "--workdir=gs://a/b"],
     "workdir once"),
    (["run", *WHERE, f"--workdir={WORKDIR}", "--", "python", "train.py"], "bertjax entrypoint"),
    (["run", *WHERE, f"--workdir={WORKDIR}", "--env=1BAD=x", *JOB], "KEY=VALUE"),
    (["create", *WHERE], "--accelerator_type is required"),
    (["create", *WHERE, "--accelerator_type=v4-7"], "runtime_version"),
    (["create", "--name=Bad_Name", f"--zone={ZONE}", f"--project={PROJECT}"], "TPU name"),
    (["sync", f"--name={NAME}", f"--project={PROJECT}"], "--zone is required"),
    (["launch", *WHERE], "unknown command"),
    (["sync", *WHERE, "--bogus_flag"], "bad command line"),
])
def test_user_errors(args, message):
    with pytest.raises(UserError, match=message):
        dry(*args)


def test_cli_dry_run_prints_exactly_what_it_would_run_and_runs_nothing(tmp_path):
    # A stand-in gcloud on PATH records every call: the dry run must make none, and the real run
    # must make exactly the call the dry run printed.
    calls = tmp_path / "calls.jsonl"
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    args = [sys.executable, "-m", "launch.tpu", "create", *WHERE, "--accelerator-type=v4-32",
            "--spot"]
    out = subprocess.run([*args, "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout
    assert not calls.exists()
    (printed,) = [shlex.split(ln) for ln in out.splitlines()]
    subprocess.run(args, cwd=ROOT, env=env, capture_output=True, check=True)
    (made,) = [json.loads(ln) for ln in calls.read_text().splitlines()]
    assert printed == ["gcloud", *made]
    assert "--spot" in made and "--accelerator-type=v4-32" in made


def test_cli_user_error_is_one_line_and_exit_code_2():
    p = subprocess.run([sys.executable, "-m", "launch.tpu", "run", *WHERE, "--workdir=/local",
                        *JOB, "--dry_run"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1
    assert p.stderr.startswith("error: --workdir=")


def test_launcher_imports_no_training_stack():
    code = ("import sys, launch.tpu; bad = [m for m in ('jax', 'tensorflow', 'flax', 'numpy') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# -- states ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("queued, qstate, nstate, kind", [
    (False, None, None, "ABSENT"), (False, None, "READY", "READY"),
    (False, None, "PREEMPTED", "GONE"), (False, None, "TERMINATED", "GONE"),
    (False, None, "CREATING", "PENDING"), (False, None, "REPAIRING", "PENDING"),
    (True, None, None, "ABSENT"), (True, "WAITING_FOR_RESOURCES", None, "PENDING"),
    (True, "PROVISIONING", None, "PENDING"), (True, "SUSPENDED", None, "GONE"),
    (True, "FAILED", None, "GONE"), (True, "ACTIVE", None, "PENDING"),
    (True, "ACTIVE", "READY", "READY"), (True, "ACTIVE", "PREEMPTED", "GONE"),
])
def test_classify(queued, qstate, nstate, kind):
    assert ops.classify(queued, qstate, nstate).kind == kind


# -- until-done against a simulated TPU --------------------------------------------------------------
class FakeCloud:
    """A TPU slice of `workers` VMs and a GCS workdir, driven by the commands the launcher runs.

    `events[i]` runs just before the i-th look at COMPLETED (1-based), to preempt the TPU, crash
    the job or finish the run.
    """

    def __init__(self, workers: int = 2, node: str | None = None, job: str = "none", events=None):
        self.workers = workers
        self.node = node
        self.tree = node is not None
        self.job = job  # none | running | exited
        self.completed = False
        self.looks = 0
        self.events = dict(events or {})
        self.calls: list[list[str]] = []

    def __call__(self, argv, capture):
        argv = list(argv)
        self.calls.append(argv)
        if argv[1:3] == ["storage", "ls"]:
            self.looks += 1
            if self.looks in self.events:
                self.events.pop(self.looks)(self)
            if self.completed:
                return Result(0, f"{WORKDIR}/COMPLETED\n")
            return Result(1, err="ERROR: (gcloud.storage.ls) One or more URLs matched no objects.")
        if argv[1:3] == ["storage", "cat"]:
            return Result(0, '{"step": 250000, "time": 1.0}\n')
        verb = argv[4]
        if verb == "describe":
            if self.node is None:
                return Result(1, err=f"ERROR: NOT_FOUND: Resource nodes/{NAME} was not found")
            return Result(0, json.dumps({"state": self.node,
                                         "networkEndpoints": [{}] * self.workers}))
        if verb == "delete":
            self.node, self.tree, self.job = None, False, "none"
        elif verb == "create":
            self.node, self.tree, self.job = "READY", False, "none"
        elif verb == "ssh":
            return self._ssh(remote_command(argv))
        return Result(0)

    def _ssh(self, cmd: str) -> Result:
        assert self.node == "READY", "ssh to a TPU that is not READY"
        if "tar -xzf" in cmd:
            self.tree = True
        elif "worker.sh alive" in cmd:
            if not self.tree:
                return Result(0, "".join(f"bertjax-worker host{i} missing\n"
                                         for i in range(self.workers)))
            detail = {"running": "running 123", "exited": "exited 1", "none": "none"}[self.job]
            detail += " tree=abc123"
            return Result(0, "".join(f"bertjax-worker {i} {detail}\n" for i in range(self.workers)))
        elif "worker.sh start" in cmd:
            assert self.tree and self.job != "running", "started over a running job"
            self.job = "running"
        elif "worker.sh stop" in cmd:
            self.job = "exited" if self.job == "running" else self.job
        return Result(0)


def preempt(c):
    c.node, c.job = "PREEMPTED", "none"


def crash(c):
    c.job = "exited"


def finish(c):
    c.completed, c.job = True, "exited"


def until_done(cloud: FakeCloud, monkeypatch, queued: bool = False, **policy):
    monkeypatch.setattr(packing, "pack", lambda root, out: (3, 100, "abc123"))
    notes: list[str] = []
    runner = Runner(execute=cloud, echo=notes.append)
    target = gcloud.Target(NAME, ZONE, PROJECT, queued=queued)
    launcher = ops.Launcher(target, runner, sleep=lambda s: None)
    job = remote.job_argv("bertjax.pretrain", ["--config=configs/tpu.py:v4-16"], WORKDIR)
    spec = tpu.create_spec("v4-16", "", spot=True)
    from launch.until_done import Policy, UntilDone

    loop = UntilDone(launcher, spec, job, WORKDIR, remote.job_env(), Policy(**policy))
    return loop, notes


def kinds(calls):
    """Each call reduced to what it does."""
    out = []
    for c in calls:
        if c[1] == "storage":
            out.append(f"storage-{c[2]}")
        elif c[4] == "ssh":
            cmd = remote_command(c)
            out.append(next(f"ssh-{k}" for k in ("tar", "setup", "start", "stop", "alive", "logs")
                            if (f"worker.sh {k}" if k != "tar" else "tar -xzf") in cmd))
        else:
            out.append(c[4])
    return out


def test_until_done_resumes_after_preemption_and_crash_and_never_touches_the_workdir(monkeypatch):
    cloud = FakeCloud(events={3: preempt, 5: crash, 7: finish})
    loop, notes = until_done(cloud, monkeypatch)
    assert loop.run() == 0
    k = kinds(cloud.calls)
    first_create = ["storage-ls", "describe", "create", "describe", "scp", "ssh-tar", "ssh-setup",
                    "ssh-start"]
    assert k[:len(first_create)] == first_create
    # The preempted TPU is deleted and re-created, set up again, and the same job started.
    at = k.index("delete")
    assert k[at:at + 7] == ["delete", "create", "describe", "scp", "ssh-tar", "ssh-setup",
                            "ssh-start"]
    # The crash on a healthy TPU restarts the job without touching the TPU.
    assert k.count("create") == 2 and k.count("delete") == 1 and k.count("ssh-stop") == 1
    assert k[-2:] == ["storage-ls", "storage-cat"]
    assert (loop.recreations, loop.restarts) == (1, 1)
    # Resume, not restart: every start is the identical command on the same workdir, and nothing
    # ever deletes, moves or rewrites anything in GCS.
    starts = [remote_command(c) for c in cloud.calls if "worker.sh start" in " ".join(c)]
    assert len(starts) == 3 and len(set(starts)) == 1 and f"--workdir={WORKDIR}" in starts[0]
    for c in cloud.calls:
        assert c[1:3] not in (["storage", "rm"], ["storage", "mv"], ["storage", "cp"])
        if c[1] != "storage":
            assert WORKDIR not in c[-1] or "worker.sh start" in c[-1]
    delete = next(c for c in cloud.calls if "delete" in c)
    assert delete == [*gcloud.TPU_VM, "delete", NAME, f"--zone={ZONE}", f"--project={PROJECT}",
                      "--quiet"]
    assert any("final step 250000" in n for n in notes)
    assert any("still up and billed" in n for n in notes)


def test_until_done_dry_run_plan_keeps_the_workdir():
    cmds = dry("run", *WHERE, f"--workdir={WORKDIR}", "--until-done", "--accelerator-type=v4-32",
               "--queued", "--spot", *JOB)
    k = kinds(cmds)
    assert k[0] == "storage-ls" and "delete" in k and "create" in k
    assert k.index("delete") < k.index("create") < k.index("ssh-setup") < k.index("ssh-start")
    starts = {remote_command(c) for c in cmds if "worker.sh start" in " ".join(c)}
    assert len(starts) == 1
    for c in cmds:
        assert c[1:3] not in (["storage", "rm"], ["storage", "mv"])
        if "delete" in c:
            assert c[:6] == [*gcloud.QUEUED, "delete", NAME] and "--force" in c


def test_until_done_gives_up_on_a_crash_loop(monkeypatch):
    cloud = FakeCloud(node="READY", job="running", events={i: crash for i in range(2, 20)})
    loop, _ = until_done(cloud, monkeypatch, max_restarts=2)
    with pytest.raises(UserError, match="stopped 3 times .* launch.tpu logs"):
        loop.run()
    assert kinds(cloud.calls).count("ssh-start") == 2 and "create" not in kinds(cloud.calls)


def test_until_done_does_not_restart_a_run_that_just_finished(monkeypatch):
    cloud = FakeCloud(node="READY", job="running", events={2: crash, 3: finish})
    loop, _ = until_done(cloud, monkeypatch)
    # Look 2 sees the job gone; the second look at COMPLETED (3) finds the run finished.
    loop.poll()
    assert not loop.poll()
    assert "ssh-start" not in kinds(cloud.calls) and loop.restarts == 0
    assert loop.poll() is True


def test_until_done_sets_up_a_tpu_it_did_not_create_and_waits_for_a_queue(monkeypatch):
    cloud = FakeCloud(node="READY", events={2: finish})
    cloud.tree = False
    loop, _ = until_done(cloud, monkeypatch)
    assert loop.run() == 0
    assert kinds(cloud.calls)[:7] == ["storage-ls", "describe", "ssh-alive", "scp", "ssh-tar",
                                      "ssh-setup", "ssh-stop"]

    waiting = FakeCloud()
    loop, notes = until_done(waiting, monkeypatch, queued=True)
    monkeypatch.setattr(loop.L, "state", lambda: ops.TpuState("PENDING", "queued resource "
                                                              "WAITING_FOR_RESOURCES"))
    assert loop.poll() is False and loop.failures == 0
    assert "create" not in kinds(waiting.calls)


def test_until_done_gives_up_when_gcloud_keeps_failing(monkeypatch):
    cloud = FakeCloud(node="READY", job="running")
    loop, _ = until_done(cloud, monkeypatch, max_failures=3)
    monkeypatch.setattr(loop.L, "completed", lambda workdir: None)
    cloud.job = "exited"
    with pytest.raises(UserError, match="3 failures in a row.*COMPLETED"):
        loop.run()
    assert "ssh-start" not in kinds(cloud.calls)


# -- the archive -----------------------------------------------------------------------------------
def test_pack_takes_what_git_would_commit(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "data").mkdir()
    (repo / ".venv").mkdir()
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    (repo / "data" / "big.bin").write_bytes(b"0" * 100)
    (repo / ".venv" / "python").write_text("")
    (repo / ".gitignore").write_text(".venv/\ndata/\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    out = tmp_path / "out" / "src.tar.gz"
    n, size, sync_id = packing.pack(repo, out)
    import tarfile

    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == [".gitignore", "pkg/a.py"]
    assert n == 2 and size == out.stat().st_size and len(sync_id) == 12
    assert not out.with_name(out.name + ".tmp").exists()
    with pytest.raises(UserError, match="git checkout"):
        packing.pack(tmp_path / "out", tmp_path / "x.tar.gz")


# -- the worker script, run here ---------------------------------------------------------------------
def worker_sh(*args: str, logdir: Path, **env: str) -> str:
    env = dict(os.environ, BERTJAX_WORKER="3", **env)
    p = subprocess.run(["bash", str(ROOT / "launch" / "worker.sh"), args[0], str(logdir),
                        *args[1:]], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def wait_for(logdir: Path, state: str) -> str:
    for _ in range(200):
        line = worker_sh("alive", logdir=logdir)
        if f" {state}" in line:
            return line
        time.sleep(0.05)
    raise AssertionError(f"worker never reached {state}: {line}")


def test_worker_script_runs_detached_jobs_with_per_worker_logs(tmp_path):
    logdir = tmp_path / "logs"
    assert worker_sh("alive", logdir=logdir).strip() == "bertjax-worker 3 none tree=?"
    job = [sys.executable, "-c", "import os; print('up', os.environ['MARK']); raise SystemExit(4)"]
    assert "started" in worker_sh("start", "", "--", *job, logdir=logdir, MARK="m1")
    assert wait_for(logdir, "exited").strip() == "bertjax-worker 3 exited 4 tree=?"
    assert "[worker 3] up m1" in worker_sh("logs", "10", logdir=logdir)
    assert "exit code 4" in (logdir / "worker-3.log").read_text()

    # A job that checkpoints on TERM gets to finish; an earlier attempt's log is kept.
    handler = ("import signal, sys, time\n"
               "signal.signal(signal.SIGTERM, lambda *a: (print('saved'), sys.exit(0)))\n"
               "print('ready', flush=True)\ntime.sleep(60)\n")
    worker_sh("start", "", "--", sys.executable, "-c", handler, logdir=logdir)
    wait_for(logdir, "running")
    log = logdir / "worker-3.log"
    for _ in range(400):  # the log's first line quotes the command, so look for the line alone
        if log.exists() and "ready" in log.read_text().splitlines():
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the job never got ready: {log.read_text()}")
    p = subprocess.run(["bash", str(ROOT / "launch" / "worker.sh"), "start", str(logdir), "", "--",
                        "true"], env=dict(os.environ, BERTJAX_WORKER="3"), capture_output=True,
                       text=True)
    assert p.returncode != 0 and "already running" in p.stderr
    assert "stopped" in worker_sh("stop", "20", logdir=logdir)
    assert worker_sh("alive", logdir=logdir).strip() == "bertjax-worker 3 exited 0 tree=?"
    assert "saved" in (logdir / "worker-3.log").read_text()
    assert len(list(logdir.glob("worker-3.before-*.log"))) == 1


# -- configs/tpu.py ----------------------------------------------------------------------------------
def tpu_config(arg: str, *overrides: str):
    """Loads the recipe the way the entrypoints do: an ml_collections config-file flag."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["prog", f"--config={ROOT / 'configs' / 'tpu.py'}:{arg}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    return fv.config


@pytest.mark.parametrize("arg, per_chip, fsdp, layers", [
    ("v4-8", 64, 1, 12), ("v4-32", 64, 4, 12), ("v5e-16", 64, 4, 12), ("v5p-8", 64, 1, 12),
    ("v4-8:large", 64, 1, 24), ("v5e-8:large", 64, 1, 24), ("v4-32:large:512", 32, 4, 24),
    ("v5e-8:base:512", 64, 1, 12), ("v5e-4:large:512", 16, 1, 24), ("v5e-16:large:512", 16, 4, 24),
])
def test_tpu_config(arg, per_chip, fsdp, layers):
    c = tpu_config(arg)
    chips = slices.parse_slice(arg.split(":")[0]).chips
    seq = 512 if arg.endswith(":512") else 128
    assert (c.model.dtype, c.model.param_dtype, c.model.attention_backend) == (
        "bfloat16", "float32", "splash")
    assert (c.model.attention_dropout, c.model.hidden_dropout) == (0.0, 0.1)
    assert c.model.num_layers == layers and c.data.max_seq_length == seq
    assert c.train.batch_size == per_chip * chips
    assert (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) == (-1, fsdp, 1)
    # The same number of sequences as the batch-256 recipe, with sqrt-scaled learning rate.
    steps_at_256 = 100_000 if seq == 512 else 1_000_000
    assert c.train.num_steps * c.train.batch_size == pytest.approx(steps_at_256 * 256, rel=1e-3)
    assert c.optim.learning_rate == pytest.approx(1e-4 * (c.train.batch_size / 256) ** 0.5)
    if arg in ("v4-8", "v5p-8", "v4-8:large"):
        assert (c.train.batch_size, c.train.num_steps, c.optim.warmup_steps) == (256, 1_000_000,
                                                                                 10_000)


@pytest.mark.parametrize("arg", ["v4-8", "v4-16", "v5e-8:large", "v5e-8"])
def test_tpu_config_mesh_fits_the_slice(arg):
    # The 8 virtual CPU devices stand in for the chips of a slice of up to 8 chips.
    import jax

    from bertjax.train.mesh import make_mesh

    c = tpu_config(arg)
    chips = slices.parse_slice(arg.split(":")[0]).chips
    mesh = make_mesh(c.mesh, jax.devices()[:chips])
    assert mesh.devices.size == chips and mesh.shape["fsdp"] == c.mesh.fsdp
    assert c.train.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0


def test_tpu_config_overrides_and_errors():
    c = tpu_config("v4-32", "--config.train.batch_size=512", "--config.model.attention_backend=xla")
    assert (c.train.batch_size, c.model.attention_backend) == (512, "xla")
    import importlib.util

    spec = importlib.util.spec_from_file_location("tpu_recipe", ROOT / "configs" / "tpu.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    for bad, message in [("v4-7", "multiple of 2"), ("v4-8:huge", "preset"),
                         ("v4-8:base:256", "phase"), ("", "SLICE"), ("tpu-9", "unknown TPU slice")]:
        with pytest.raises(ValueError, match=message):
            recipe.get_config(bad)


def test_status_reports_the_tpu_the_workers_and_completion(capsys):
    cloud = FakeCloud(workers=2, node="READY", job="running")
    runner = Runner(execute=cloud, echo=lambda s: None)
    assert tpu.run(["launch.tpu", "status", *WHERE, f"--workdir={WORKDIR}"], runner=runner) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{NAME}: READY (READY), 2 worker(s)"
    assert out[1:3] == ["  worker 0: running 123 tree=abc123",
                        "  worker 1: running 123 tree=abc123"]
    assert out[3] == f"{WORKDIR}/COMPLETED: not yet"


def test_waiting_for_a_tpu_gives_up_when_its_state_cannot_be_read():
    def denied(argv, capture):
        return Result(1, err="ERROR: (gcloud.compute.tpus.tpu-vm.describe) PERMISSION_DENIED: no")

    launcher = ops.Launcher(gcloud.Target(NAME, ZONE, PROJECT), Runner(execute=denied,
                                                                      echo=lambda s: None),
                            sleep=lambda s: None)
    with pytest.raises(UserError, match="PERMISSION_DENIED.*5 times in a row"):
        launcher.wait_ready(poll_s=1)


def test_help_lists_every_command_and_flag(capsys):
    assert tpu.run(["launch.tpu", "--help"]) == 0
    text = capsys.readouterr().out
    for word in [*tpu.COMMANDS, "--until_done", "--dry_run", "--accelerator_type"]:
        assert word in text


def test_remote_commands_work_in_a_shell_like_a_worker(tmp_path):
    # The exact strings the launcher sends over ssh, run by bash in a fake home: unpack the tree,
    # report it, start a bertjax job under the job environment, and read its log.
    home = tmp_path / "home"
    (home / "bertjax" / "stale.py").parent.mkdir(parents=True)
    (home / "bertjax" / "stale.py").write_text("")
    venv_bin = home / "bertjax-venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (venv_bin / "python").chmod(0o755)
    tarball = tmp_path / "src.tar.gz"
    _, _, sync_id = packing.pack(ROOT, tarball)
    env = dict(os.environ, HOME=str(home), BERTJAX_WORKER="0")
    env.pop("JAX_PLATFORMS", None)

    def sh(command: str) -> str:
        p = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout

    assert sh(remote.sync(sync_id, str(tarball))).strip().endswith(sync_id)
    assert not (home / "bertjax" / "stale.py").exists() and not tarball.exists()
    assert (home / "bertjax" / "launch" / "worker.sh").exists()
    assert sh(remote.alive()).strip() == f"bertjax-worker 0 none tree={sync_id}"

    job = remote.job_argv("bertjax.tools.print_config", ["--config=configs/tpu.py:v4-8"], WORKDIR)
    env_cpu = dict(remote.job_env({"MARK_ENV": "1"}), JAX_PLATFORMS="cpu")
    assert "started" in sh(remote.start(job, str(tmp_path / "gcs"), env_cpu))
    for _ in range(300):
        if " exited " in sh(remote.alive()):
            break
        time.sleep(0.1)
    logs = sh(remote.logs(100, follow=False))
    # print_config takes no --workdir, so the job ends on a one-line flag error: that proves the
    # arguments, the appended workdir and the environment all reached it.
    assert "JAX_PLATFORMS=cpu" in logs and "PYTHONUNBUFFERED=1" in logs
    assert "Unknown command line flag 'workdir'" in logs
    assert sh(remote.alive()).startswith("bertjax-worker 0 exited 2 ")
