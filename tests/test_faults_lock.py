"""One job per workdir (issue 14): a live holder refuses a second job in one line naming it; a
stale hold (killed job, preempted VM) does not block a resume; locally and on gs:// (fake GCS)."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

import fake_gcs
import fault_support as fs
import pretrain_support as ps
from bertjax.errors import UserError
from bertjax.store import lock as workdir_lock


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _lease(path, **kw):
    now = time.time()
    rec = {"host": socket.gethostname(), "pid": os.getpid(), "start": now, "heartbeat": now,
           "token": "other"}
    rec.update(kw)
    path.mkdir(parents=True, exist_ok=True)
    (path / workdir_lock.LOCK_FILE).write_text(json.dumps(rec))


def _cases(workdir: str, write_lease, read_lease):
    """Runs the holder cases against one store; returns how many were checked."""
    # A live holder (this process, heartbeat fresh) refuses, naming host, pid and start time.
    write_lease(host=socket.gethostname(), pid=os.getpid())
    with pytest.raises(UserError) as e:
        workdir_lock.WorkdirLock(workdir).acquire()
    msg = str(e.value)
    assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg and "UTC" in msg, msg
    # Another host with a fresh heartbeat: it may well be alive; refused too.
    write_lease(host="vm-elsewhere", pid=1)
    with pytest.raises(UserError, match="vm-elsewhere"):
        workdir_lock.WorkdirLock(workdir).acquire()
    # A killed job on this host: its pid is gone, so the hold is stale at once.
    write_lease(host=socket.gethostname(), pid=_dead_pid())
    lock = workdir_lock.WorkdirLock(workdir).acquire()
    assert read_lease()["pid"] == os.getpid()
    lock.release()
    assert read_lease() is None
    # A preempted VM: another host whose heartbeat stopped longer ago than stale_after.
    write_lease(host="vm-preempted", pid=1, heartbeat=time.time() - 10_000)
    lock = workdir_lock.WorkdirLock(workdir).acquire()
    first = read_lease()
    assert first["token"] == lock.record["token"]
    # The holder keeps its heartbeat fresh; while it does, nobody else gets in.
    time.sleep(lock.heartbeat * 2.5)
    assert read_lease()["heartbeat"] > first["heartbeat"]
    with pytest.raises(UserError, match="in use by another job"):
        workdir_lock.WorkdirLock(workdir).acquire()
    lock.release()
    assert read_lease() is None
    return 5


def test_local_holds(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTJAX_LOCK_HEARTBEAT_S", "0.2")
    wd = tmp_path / "run"

    def read():
        p = wd / workdir_lock.LOCK_FILE
        return json.loads(p.read_text()) if p.exists() else None

    n = _cases(str(wd), lambda **kw: _lease(wd, **kw), read)
    fs.record("lock_local", trials=n, injected="lease files of a live process, another live "
              "host, a dead pid, a host silent for 10000 s",
              survived="live holders refused in one line; stale holds taken over; heartbeat "
              "refreshed")


@pytest.mark.skipif(fake_gcs.unavailable_reason() is not None,
                    reason=str(fake_gcs.unavailable_reason()))
def test_gcs_holds_with_generation_preconditions(monkeypatch):
    try:
        server = fake_gcs.FakeGcs().start()
    except fake_gcs.ServerUnavailable as e:
        pytest.skip(f"fake GCS server cannot run here: {e}")
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        monkeypatch.setenv("BERTJAX_LOCK_HEARTBEAT_S", "0.2")
        workdir = f"gs://{server.bucket}/runs/locked"
        name = "runs/locked/" + workdir_lock.LOCK_FILE

        def write(**kw):
            now = time.time()
            rec = {"host": socket.gethostname(), "pid": os.getpid(), "start": now,
                   "heartbeat": now, "token": "other", **kw}
            server._request("POST", f"/upload/storage/v1/b/{server.bucket}/o?uploadType=media&"
                            f"name={name}", json.dumps(rec), "application/json")

        def read():
            if name not in server.list("runs/locked/"):
                return None
            return json.loads(server.read(name))

        n = _cases(workdir, write, read)
        # Two jobs racing for a free workdir: the create precondition (ifGenerationMatch=0)
        # lets exactly one of them win.
        a, b = workdir_lock.WorkdirLock(workdir), workdir_lock.WorkdirLock(workdir)
        assert a.store.create(a.record)
        assert not b.store.create(b.record)
        with pytest.raises(UserError, match="in use by another job"):
            b.acquire()
        a.release()
        assert read() is None
    finally:
        server.stop()
    fs.record("lock_gcs", trials=n + 1, injected="the same leases as objects in the fake GCS, "
              "plus a create race", survived="refused / taken over as locally; exactly one "
              "creator wins (ifGenerationMatch=0)")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return ps.prepare(str(tmp_path_factory.mktemp("lock-data")))


def test_second_pretrain_on_a_held_workdir_refuses_and_a_killed_holder_does_not_block(data,
                                                                                       tmp_path):
    data_dir, vocab = data
    wd = tmp_path / "run"
    holder = workdir_lock.WorkdirLock(str(wd)).acquire()  # a live job: this test process
    try:
        r = ps.run_pretrain(str(wd), ps.overrides(data_dir, vocab, **{"train.num_steps": 4}))
    finally:
        holder.release()
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert lines[-1].startswith("error: workdir") and f"pid {os.getpid()}" in lines[-1], lines[-1]
    assert len([ln for ln in lines if ln.startswith("error:")]) == 1
    assert fs.workdir_files(str(wd)) == []  # it wrote nothing (its lease is only ever ours)
