"""SIGKILL resume of `data.source=text` runs on 1 and 2 processes (issue 32). A run reading raw
text (pairs built on the fly, fresh each epoch) is killed once its committed checkpoint is past
the first epoch, at a step and a moment drawn from BERTJAX_FAULT_SEED, and run again to the end.
It must log `resumed from step N` for the commit it found, and every logged loss (the steps re-run
after the resume included) and the final params must equal an unbroken run's. The steps after N
come from the data position saved with the checkpoint, so a wrong position (pairs of another
epoch, another document order) feeds other batches and shows as other losses. The cheap core,
exact resume of the stream itself anywhere on 1 and 2 hosts, is in test_stream.py.

Cost (2026-12-06, 2-core box beside another test run, warm XLA cache): 45 s on 1 process, 99 s
on 2 (110 CPU-s for both); the reference run compiles, the killed run and its rerun read XLA's
persistent cache."""
import os
import signal
import socket
import sys
import time

import numpy as np
import pytest

import fault_support as fs
import pretrain_support as ps
from test_faults_kill import _max_diff, _params
from test_stream import corpus  # noqa: F401  (the same three-file corpus and vocabulary)

pytestmark = pytest.mark.slow
STEPS = 30
# Each host's epoch is about 9 steps of 32 sequences on this corpus (fewer files per host on 2
# processes, so shorter): a commit at 10 or later is past epoch 0, and the rerun must find its
# epoch and its place in it. 16 steps after the last kill point, so that the random delay (at
# most 0.2 s) cannot outlast the run however fast the machine.
KILL_STEPS = (10, 12, 14)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _committed(wd) -> int:
    d = os.path.join(wd, "checkpoints")
    return max((int(p) for p in (os.listdir(d) if os.path.isdir(d) else []) if p.isdigit()),
               default=0)


@pytest.mark.parametrize("processes", [1, 2])
def test_sigkilled_text_run_resumes_with_the_unbroken_losses(corpus, tmp_path, processes):  # noqa: F811
    rng = fs.rng(f"kill-stream-{processes}")
    kill_at, delay = rng.choice(KILL_STEPS), rng.uniform(0.0, 0.2)
    vocab = ps.write_vocab(os.path.join(corpus, "vocab.txt"))
    args = ps.overrides("", vocab, **{
        "data.source": "text", "data.text_files": os.path.join(corpus, "corpus-*.txt"),
        "data.vocab": os.path.join(corpus, "vocab.txt"), "train.batch_size": 32,
        "train.num_steps": STEPS, "train.checkpoint_every": 2, "train.keep_checkpoints": 2})
    # 4 devices in all (2 a process on 2): a step's all-reduce over 8 gloo ranks costs about a
    # quarter more on 2 processes, and the claim does not depend on the device count.
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=ps.xla_flags(4 // processes))

    def start(wd, log):
        port = _free_port()

        def extra(i):
            if processes == 1:
                return []
            return [f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                    f"--config.distributed.num_processes={processes}",
                    f"--config.distributed.process_id={i}"]
        return [fs.Watched([sys.executable, "-m", "bertjax.pretrain", "--config=configs/bert_tiny.py",
                            f"--workdir={wd}", *args, *extra(i)], ps.ROOT, env,
                           str(tmp_path / f"{log}-{i}.stderr")) for i in range(processes)]

    def finish(ws, log):
        for i, w in enumerate(ws):
            assert w.finish() == 0, open(tmp_path / f"{log}-{i}.stderr").read()[-3000:]

    ref = str(tmp_path / "ref")
    finish(start(ref, "ref"), "ref")
    wd = str(tmp_path / "killed")
    ws = start(wd, "killed")
    while _committed(wd) < kill_at and all(w.proc.poll() is None for w in ws):
        time.sleep(0.005)
    # A random moment after that commit: inside a step, an async save or the next commit.
    t = time.monotonic() + delay
    while time.monotonic() < t and all(w.proc.poll() is None for w in ws):
        time.sleep(0.005)
    killed = all(w.proc.poll() is None for w in ws)
    for w in ws:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGKILL)
    for w in ws:
        w.finish()
    at_kill = _committed(wd)
    where = f"{fs.tag()} kill after commit {kill_at} + {delay:.3f} s, committed {at_kill}"
    assert killed and kill_at <= at_kill < STEPS, where
    ws = start(wd, "rerun")
    finish(ws, "rerun")
    assert all(fs.resumed_from(w) == at_kill for w in ws), where
    got = fs.logged_losses(os.path.join(wd, "metrics.jsonl"))
    want = dict(fs.logged_losses(os.path.join(ref, "metrics.jsonl")))
    assert sorted({s for s, _ in got}) == list(range(1, STEPS + 1)), where
    for s, v in got:
        np.testing.assert_allclose(v, want[s], rtol=1e-6, err_msg=f"{where}: step {s}")
    assert _max_diff(_params(wd), _params(ref)) <= 1e-6, where
    fs.record(f"sigkill_stream_{processes}proc", kill_after_commit=kill_at,
              delay_s=round(delay, 3), committed_at_kill=at_kill, resumed_from=at_kill,
              loss_rows_compared=len(got), steps=STEPS,
              injected=f"SIGKILL of {processes} `python -m bertjax.pretrain` process(es) reading "
              "data.source=text, after a commit past epoch 0 and a random delay",
              survived="every process logged `resumed from step N` for the commit; every logged "
              "loss and the final params equal the unbroken run's")
