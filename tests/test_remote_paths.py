"""Issue 7: the pretraining entrypoint with its workdir and its data on gs:// URLs of a local fake
GCS (see fake_gcs.py), so no code path may assume a local disk.

TensorFlow reaches the fake through its own GCS filesystem (tf.data shards, metadata, epath's
files: config, metrics, TensorBoard, plot, markers) and TensorStore through its gcs driver (Orbax
array data), the same clients a real bucket would meet. The local copy of the prepared data is
deleted before training, and the run's working directory must stay empty, so a stray local read
or write (say, a directory named "gs:" made by os.makedirs) fails the test.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fake_gcs
import pretrain_support as ps

pytestmark = pytest.mark.skipif(fake_gcs.unavailable_reason() is not None,
                                reason=str(fake_gcs.unavailable_reason()))


gcs = pytest.fixture(scope="module", name="gcs")(fake_gcs.serve)


def _run(workdir: str, args: list[str], cwd, gcs) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (ps.ROOT, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, **gcs.env(), PYTHONPATH=path, JAX_PLATFORMS="cpu",
               XLA_FLAGS=ps.xla_flags(8))
    cmd = [sys.executable, "-m", "bertjax.pretrain",
           f"--config={os.path.join(ps.ROOT, 'configs', 'bert_tiny.py')}", f"--workdir={workdir}",
           *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def _jsonl_steps(gcs, name: str, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in gcs.read(name).decode().splitlines() if line.strip()]
    return {int(r["step"]): float(r[key]) for r in rows if key in r}


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


@pytest.mark.slow
def test_pretrain_with_workdir_and_data_on_gcs(gcs, tmp_path):
    if not _importable("google.cloud.storage"):
        pytest.fail("google-cloud-storage is not installed: Orbax 0.12.8 imports it for every "
                    "gs:// checkpoint directory (bucket namespace check), so a gs:// workdir "
                    "cannot work without it; install the pinned version from requirements.txt")
    prep = tmp_path / "prep"
    data_dir, vocab = ps.prepare(str(prep))
    data_url = gcs.upload_tree(data_dir, "prepared/train")
    shutil.rmtree(prep)  # from here on the data exists only in the bucket
    workdir = f"gs://{gcs.bucket}/runs/tiny"
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    def args(num_steps, eval_dir=""):
        return ps.overrides(data_url, vocab, **{
            "train.num_steps": num_steps, "train.checkpoint_every": 2, "train.keep_checkpoints": 2,
            "data.eval_dir": eval_dir, "train.eval_every": 4, "train.eval_steps": 2,
            "train.plot": True})

    r = _run(workdir, args(4, eval_dir=data_url), cwd, gcs)
    assert r.returncode == 0, r.stderr[-4000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 4
    names = set(gcs.list("runs/tiny/"))
    for name in ("config.json", "tokenizer_identity.json", "vocab/vocab.txt", "metrics.jsonl",
                 "COMPLETED", "curves.png", "checkpoints/2/commit_success.txt",
                 "checkpoints/4/commit_success.txt", "checkpoints/4/state/manifest.ocdbt"):
        assert f"runs/tiny/{name}" in names, (name, sorted(names))
    events = [n for n in names if n.startswith("runs/tiny/tensorboard/events.out.tfevents.")]
    assert len(events) == 1 and gcs.read(events[0])
    assert not any(n.endswith(".tmp") for n in names)
    assert json.loads(gcs.read("runs/tiny/COMPLETED"))["step"] == 4
    assert gcs.read("runs/tiny/curves.png").startswith(b"\x89PNG")
    losses = _jsonl_steps(gcs, "runs/tiny/metrics.jsonl", "train/loss")
    assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(list(losses.values())))
    assert 4 in _jsonl_steps(gcs, "runs/tiny/metrics.jsonl", "eval/loss")

    # The same command with more steps (and no eval, to save time) resumes from the checkpoint in the bucket: Orbax lists and
    # restores it (arrays through TensorStore), the data position comes back with it, the oldest
    # checkpoint is deleted from the bucket (keep 2), and the metrics file, the plot and COMPLETED
    # are rewritten in place.
    r = _run(workdir, args(6), cwd, gcs)
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"resumed from step 4 in {workdir}" in r.stdout
    losses = _jsonl_steps(gcs, "runs/tiny/metrics.jsonl", "train/loss")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert json.loads(gcs.read("runs/tiny/COMPLETED"))["step"] == 6
    names = set(gcs.list("runs/tiny/"))
    assert "runs/tiny/checkpoints/6/commit_success.txt" in names
    assert not any(n.startswith("runs/tiny/checkpoints/2/") for n in names)

    assert os.listdir(cwd) == []  # nothing landed on the local disk under a relative path
