"""Storage faults on gs:// (issue 14): the fake GCS answers chosen requests with 5xx/429 or stalls
them (gcs_faults.py, a proxy every client of the child process goes through), and real
`python -m bertjax.pretrain` runs on gs:// workdirs and data meet them.

- a few transient faults on checkpoint writes (TensorStore's array data and TensorFlow's small
  files) and on input reads: retried; the run equals the unbroken one, loss for loss.
- checkpoint writes that keep failing: the run stops in one line naming the storage failure;
  the step committed before is byte-for-byte unchanged; the rerun (with faults on the restore's
  reads) resumes from it and equals the unbroken run.
- input reads that keep failing: one line, non-zero exit.

The clients' retries are bounded to a few short ones here (RETRY_ENV) so that a failing request
gives up in a second, not minutes; bertjax's own defaults are in bertjax/store/retries.py.
"""
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import fake_gcs
import fault_support as fs
import pretrain_support as ps

# No module-wide skip: google-cloud-storage is pinned, and the tests that need the server get it
# from the `gcs` fixture (a missing server binary skips those alone, and fails a CI run).

# Small, fast retry budgets for every client (the mechanisms are the real ones).
RETRY_ENV = {
    "BERTJAX_GCS_MAX_RETRIES": "3", "BERTJAX_GCS_RETRY_INITIAL_S": "0.05",
    "BERTJAX_GCS_RETRY_MAX_S": "0.2",  # TensorStore (Orbax's arrays)
    "TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS": "1", "TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES": "1",
    "GCS_RETRY_CONFIG_MAX_RETRIES": "3", "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "10000",
    "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "100000",  # TensorFlow's GCS filesystem
}
STEPS, EVERY = 8, 4
# From the first fault of a persistent failure to the process's exit: the retries themselves
# take ~1 s (RETRY_ENV); the rest is the save's other work and the exit, on a loaded 2-core box.
FAILURE_BOUND_S = 60.0
SHARD_READ = r"part-00000-pass-00[01]\.rec($|\?)"  # the shards, not their .done files

@pytest.fixture(scope="module")
def gcs():
    yield from fake_gcs.serve(faults=True)


@pytest.fixture(scope="module")
def data(gcs, tmp_path_factory):
    import shutil

    prep = tmp_path_factory.mktemp("gcs-faults-prep")
    data_dir, vocab = ps.prepare(str(prep))
    url = gcs.upload_tree(data_dir, "prepared/train")
    shutil.rmtree(prep)
    return url, vocab


def _args(data, **kw):
    url, vocab = data
    return ps.overrides(url, vocab, **{"train.num_steps": STEPS, "train.checkpoint_every": EVERY,
                                      "train.keep_checkpoints": 2, **kw})


def _command(gcs, run: str, args):
    env = dict(os.environ, **gcs.env(), **RETRY_ENV, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(p for p in (ps.ROOT, os.environ.get("PYTHONPATH")) if p),
               XLA_FLAGS=ps.xla_flags(8))
    cmd = [sys.executable, "-m", "bertjax.pretrain",
           f"--config={os.path.join(ps.ROOT, 'configs', 'bert_tiny.py')}",
           f"--workdir=gs://{gcs.bucket}/runs/{run}", *args]
    return cmd, env


def _run(gcs, run, args) -> tuple[subprocess.CompletedProcess, float]:
    cmd, env = _command(gcs, run, args)
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ps.ROOT, env=env, capture_output=True, text=True, timeout=400)
    return r, time.monotonic() - t0


def _losses(gcs, run) -> list[tuple[int, float]]:
    rows = []
    for line in gcs.read(f"runs/{run}/metrics.jsonl").decode().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "train/loss" in row:
            rows.append((int(row["step"]), float(row["train/loss"])))
    return rows


def _committed(gcs, run) -> list[int]:
    names = gcs.list(f"runs/{run}/checkpoints/")
    return sorted(int(n.split("/")[3]) for n in names
                  if n.count("/") == 4 and n.endswith("/commit_success.txt"))


def _digest(gcs, prefix) -> dict[str, str]:
    return {n: hashlib.sha256(gcs.read(n)).hexdigest() for n in gcs.list(prefix)
            if not n.endswith("/")}


def _retried(stats) -> tuple[int, int]:
    """(faults served, faults after which the same request came back and succeeded)."""
    log = stats["log"]
    served = retried = 0
    for i, (_, method, name, outcome) in enumerate(log):
        if outcome == "stall" or (isinstance(outcome, int) and outcome >= 429):
            served += 1
            retried += any(m == method and n == name and isinstance(o, int) and o < 300
                           for _, m, n, o in log[i + 1:])
    return served, retried


def _faults_per_request(stats) -> dict[tuple[str, str], int]:
    """Faults served per (method, object): one request and its retries."""
    counts: dict[tuple[str, str], int] = {}
    for _, method, name, outcome in stats["log"]:
        if outcome == "stall" or (isinstance(outcome, int) and outcome >= 429):
            counts[(method, name)] = counts.get((method, name), 0) + 1
    return counts


def _first_fault_time(stats) -> float:
    return min(t for t, _, _, outcome in stats["log"]
               if outcome == "stall" or (isinstance(outcome, int) and outcome >= 429))


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


@pytest.fixture(scope="module")
def reference(gcs, data, tmp_path_factory):
    """The unbroken run every faulted one is compared with: in this process, on local disk, from
    a local copy of the bucket's data (the same shards, checked), with the recipe and overrides
    the faulted runs' command line gives. Storage cannot change a loss, so the comparison is
    the same; a subprocess through the fake GCS cost a process start and the proxy's traffic."""
    import importlib.util

    from bertjax import pretrain

    root = tmp_path_factory.mktemp("gcs-faults-ref")
    data_dir, vocab = ps.prepare(str(root / "prep"))
    assert vocab == data[1]
    # The shards: what the steps read (metadata.json and the .done files hold paths and times).
    local = {os.path.relpath(os.path.join(d, f), data_dir): hashlib.sha256(
        open(os.path.join(d, f), "rb").read()).hexdigest()
        for d, _, files in os.walk(data_dir) for f in files if f.endswith(".rec")}
    gcs.faults.clear()
    assert len(local) >= 2 and {n[len("prepared/train/"):]: h for n, h in _digest(
        gcs, "prepared/train/").items() if n.endswith(".rec")} == local
    spec = importlib.util.spec_from_file_location(
        "bert_tiny_recipe", os.path.join(ps.ROOT, "configs", "bert_tiny.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    cfg = ps.apply(recipe.get_config(), _args((data_dir, vocab)))
    run = str(root / "ref")
    t0 = time.monotonic()
    pretrain.pretrain(cfg, run)
    secs = time.monotonic() - t0
    losses = dict(fs.logged_losses(os.path.join(run, "metrics.jsonl")))
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses, secs


def _assert_equal_losses(rows, ref):
    for s, v in rows:
        np.testing.assert_allclose(v, ref[s], rtol=1e-6, err_msg=f"step {s} {fs.tag()}")
    assert sorted({s for s, _ in rows}) == sorted(ref)


def test_orbax_tensorstore_contexts_carry_the_bounded_retries(monkeypatch):
    from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

    from bertjax.errors import UserError
    from bertjax.store import retries

    for name in ("TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS", "TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES"):
        monkeypatch.delenv(name, raising=False)  # apply() sets them: undone after the test
    for name in retries.DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    assert retries.apply() == {"max_retries": 10, "initial_delay": "1s", "max_delay": "32s"}
    assert os.environ["TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS"] == "60"
    monkeypatch.setenv("BERTJAX_GCS_MAX_RETRIES", "3")
    monkeypatch.setenv("BERTJAX_GCS_RETRY_INITIAL_S", "0.05")
    monkeypatch.setenv("BERTJAX_GCS_RETRY_MAX_S", "0.2")
    retries.apply()
    for ocdbt in (True, False):  # what every Orbax handler opens its TensorStores with
        got = ts_utils.get_ts_context(use_ocdbt=ocdbt)["gcs_request_retries"]
        assert got.to_json(include_defaults=True) == {
            "max_retries": 3, "initial_delay": "50ms", "max_delay": "200ms"}, ocdbt
    monkeypatch.setenv("BERTJAX_GCS_MAX_RETRIES", "many")
    with pytest.raises(UserError, match="BERTJAX_GCS_MAX_RETRIES"):
        retries.apply()
    monkeypatch.delenv("BERTJAX_GCS_MAX_RETRIES")
    retries.apply()


@pytest.mark.slow
def test_transient_storage_errors_are_retried_and_the_run_equals_the_unbroken_one(
        gcs, data, reference):
    ref, ref_secs = reference
    run = "transient"
    ckpt = f"runs/{run}/checkpoints"
    rules = [
        # TensorStore's uploads of array data (Orbax's OCDBT files) of both saves.
        {"method": "POST", "match": f"uploadType=media&name={ckpt}/4/state/", "status": 503,
         "times": 2},
        # Past the 1 s low-speed limit of RETRY_ENV, yet the run was measured to wait out the
        # whole stall (30 s cost a 30 s longer run, 5 s a 5 s one): the upload ends when the
        # proxy drops the connection, then is retried. So the length only sets the idle wait.
        {"method": "POST", "match": f"uploadType=media&name={ckpt}/4/state/", "kind": "stall",
         "stall_s": 5, "times": 1},
        {"method": "POST", "match": f"uploadType=media&name={ckpt}/8/state/", "status": 500,
         "times": 1},
        {"method": "POST", "match": f"uploadType=media&name={ckpt}/8/state/", "status": 429,
         "times": 1},
        # TensorFlow's upload of Orbax's commit marker of step 4.
        {"method": "POST", "match": f"uploadType=resumable&name={ckpt}/4/commit_success.txt",
         "status": 503, "times": 2},
        # tf.data's reads of the input shards.
        {"method": "GET", "match": SHARD_READ, "status": 503, "times": 2},
    ]
    gcs.faults.set(*rules)
    r, secs = _run(gcs, run, _args(data))
    stats = gcs.faults.stats()
    gcs.faults.clear()
    assert r.returncode == 0, r.stderr[-3000:]
    for rule in stats["rules"]:
        assert rule["served"] == rule["times"], (rule, fs.tag())
    served, retried = _retried(stats)
    assert served == sum(x["times"] for x in rules) and retried == served, (served, retried)
    _assert_equal_losses(_losses(gcs, run), ref)
    assert _committed(gcs, run) == [4, 8]
    assert json.loads(gcs.read(f"runs/{run}/COMPLETED"))["step"] == STEPS
    fs.record("gcs_transient", trials=served, faults_served=served, faults_retried=retried,
              requests_seen=stats["seen"], seconds=round(secs, 1),
              unbroken_seconds_in_process_local=round(ref_secs, 1),
              loss_rows_compared=len(_losses(gcs, run)),
              injected="fake GCS via the fault proxy: 2x 503, 1 stall (5 s, then the proxy "
              "drops the connection), 1x 500, 1x 429 on TensorStore's checkpoint uploads; 2x 503 on "
              "TensorFlow's upload of a commit marker; 2x 503 on tf.data's shard reads",
              survived="every fault retried (the same request came back and succeeded); the run "
              "completed; every loss equals the unbroken run's; committed steps 4 and 8")


@pytest.mark.slow
def test_checkpoint_writes_that_keep_failing_stop_in_one_line_and_the_rerun_resumes(
        gcs, data, reference):
    ref, _ = reference
    run = "persistent"
    ckpt = f"runs/{run}/checkpoints"
    # TensorStore's uploads of step 8's array data (".+": not TensorFlow's directory marker).
    gcs.faults.set({"method": "POST", "match": f"uploadType=media&name={ckpt}/8/state/.+",
                    "status": 503, "times": -1})
    cmd, env = _command(gcs, run, _args(data))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ps.ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    before = None
    while proc.poll() is None:  # the committed step's objects, as soon as it is committed
        if f"{ckpt}/4/commit_success.txt" in gcs.list(f"{ckpt}/4/"):
            before = _digest(gcs, f"{ckpt}/4/")
            break
        time.sleep(0.1)
    out, err = proc.communicate(timeout=300)  # a process that hangs after its error fails here
    ended = time.time()
    secs = time.monotonic() - t0
    stats = gcs.faults.stats()
    assert before is not None, f"step 4 was not committed while the run lived: {err[-3000:]}"
    errors = _error_lines(err)
    assert proc.returncode != 0 and len(errors) == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    line = errors[0]
    assert "checkpoint save of step" in line and "last committed step is 4" in line, line
    assert "storage HTTP 503 after 3 retries" in line, line
    served = stats["rules"][0]["served"]
    per_request = _faults_per_request(stats)
    # Bounded both ways: each upload is tried 1 + 3 times (RETRY_ENV), at least one of them all
    # 4, and the failure ends the run soon after the first fault (the retries back off 0.05 s to
    # 0.2 s each, so a few seconds; an unbounded retry loop would run to the timeout).
    assert served >= 4 and max(per_request.values()) == 4, per_request
    assert served == sum(per_request.values()) <= 4 * len(per_request), per_request
    give_up_s = ended - _first_fault_time(stats)
    assert give_up_s < FAILURE_BOUND_S, (give_up_s, per_request)
    assert _digest(gcs, f"{ckpt}/4/") == before  # never damaged
    assert _committed(gcs, run) == [4]

    # The same command with the fault gone, but the restore's reads of step 4 failing twice.
    gcs.faults.set({"method": "GET", "match": f"{ckpt}/4/state/.*tensorstore=", "status": 503,
                    "times": 2})
    r, rerun_secs = _run(gcs, run, _args(data))
    read_stats = gcs.faults.stats()
    gcs.faults.clear()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step 4" in r.stdout, r.stdout[-2000:]
    read_served, read_retried = _retried(read_stats)
    assert read_served == 2 and read_retried == 2, read_stats["rules"]
    rows = _losses(gcs, run)
    _assert_equal_losses(rows, ref)
    assert _committed(gcs, run) == [4, 8]
    fs.record("gcs_persistent_write", trials=1, message=line, faults_served=served,
              restore_faults_served=read_served, restore_faults_retried=read_retried,
              last_committed=4, loss_rows_compared=len(rows), seconds=round(secs, 1),
              rerun_seconds=round(rerun_secs, 1), faults_per_upload=max(per_request.values()),
              uploads_failed=len(per_request), gave_up_after_s=round(give_up_s, 1),
              injected="every TensorStore upload of step 8's checkpoint answered 503; then the "
              "rerun's first 2 TensorStore reads of step 4 answered 503",
              survived="exit 2, one line (the step, HTTP 503 after the retries, last committed "
              "step 4); step 4's objects byte-identical; the rerun resumed from 4 through the "
              "read faults and every loss equals the unbroken run's")


@pytest.mark.slow
def test_input_reads_that_keep_failing_stop_in_one_line(gcs, data):
    gcs.faults.set({"method": "GET", "match": SHARD_READ, "status": 503, "times": -1})
    r, secs = _run(gcs, "unreadable", _args(data))
    ended = time.time()
    stats = gcs.faults.stats()
    gcs.faults.clear()
    errors = _error_lines(r.stderr)
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "part-00000-pass-00" in errors[0] and "503" in errors[0], errors[0]
    served = stats["rules"][0]["served"]
    per_request = _faults_per_request(stats)
    # TensorFlow's 1 + 3 tries of a read, and no more; the run gives up soon after.
    assert served >= 4 and max(per_request.values()) == 4, per_request
    assert served == sum(per_request.values()) <= 4 * len(per_request), per_request
    give_up_s = ended - _first_fault_time(stats)
    assert give_up_s < FAILURE_BOUND_S, (give_up_s, per_request)
    fs.record("gcs_persistent_read", trials=1, message=errors[0], faults_served=served,
              faults_per_read=max(per_request.values()), reads_failed=len(per_request),
              gave_up_after_s=round(give_up_s, 1), seconds=round(secs, 1),
              injected="every read of an input shard (tf.data, through TensorFlow's GCS "
              "filesystem) answered 503",
              survived="exit 2, one line naming the shard and the HTTP 503 left after "
              "TensorFlow's retries")
