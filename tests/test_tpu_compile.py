"""The TPU path without a TPU chip, with libtpu: the real train steps compiled ahead of time for
single- and multi-host TPU slices, the multi-host batch placement, and `bertjax.tools.plan`.
(Splash attention's numbers in Pallas interpret mode, which need no libtpu, are in
test_splash_cpu.py.)

The compiles use the tiny model, so each takes seconds to a minute on 2 cores; a Mosaic kernel
that is not inside shard_map fails at `.compile()` ("Mosaic kernels cannot be automatically
partitioned"), which is what these tests would catch.
"""
import json
import os
import subprocess
import sys

import libtpu  # noqa: F401  (pinned in requirements.txt: imported plainly, never skipped)
import numpy as np
import pytest

from bertjax.model import BertConfig, build_model
from bertjax.model import attention as attn
from bertjax.train import aot, objectives, optim
from bertjax.train import mesh as mesh_lib
from bertjax.train.step import make_steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_backend_resolution_follows_the_mesh_platform_and_keeps_dropout():
    tpu = aot.topology_devices("v5e:2x2")
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, tpu)
    with attn.on_mesh(mesh, mesh_lib.BATCH_AXES, "tensor"):
        assert attn.resolve_backend("auto", seq_len=128) == "splash"
        # "auto" never drops BERT's attention dropout: training with it uses xla.
        assert attn.resolve_backend("auto", seq_len=128, dropout=True) == "xla"
        assert attn.resolve_backend("splash", seq_len=100) == "xla"  # not a multiple of 128
    assert attn.resolve_backend("auto", "gpu", seq_len=128) == "cudnn"
    assert attn.describe("auto", 0.1, 128, "gpu") == {
        "configured": "auto", "train": "xla", "eval": "cudnn", "attention_dropout": 0.1}
    assert attn.describe("auto", 0.0, 128, "tpu")["train"] == "splash"


TINY = BertConfig(vocab_size=1024, hidden_size=128, num_layers=2, num_heads=4,
                  intermediate_size=256, attention_backend="splash", attention_dropout=0.0,
                  dtype="bfloat16")


def _optim_cfg():
    from bertjax.config import base_config

    c = base_config("tiny").optim
    with c.unlocked():
        c.warmup_steps = 10
    return c


def _compile(topology, mesh_cfg, task, objective, per_chip=4, seq=128, eval_too=False):
    devices = aot.topology_devices(topology)
    mesh = mesh_lib.make_mesh(mesh_cfg, devices)
    tx, _ = optim.make_optimizer(_optim_cfg(), 100)
    steps = make_steps(lambda: build_model(task, TINY), objective, tx, mesh)
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    if eval_too:  # the eval and predict steps run the same attention on the same mesh
        params = {"params": mesh_lib.with_shardings(steps.abstract_state,
                                                    steps.state_shardings)["params"]}
        batch = aot.abstract_batch(objective, per_chip * rows, seq, 20, mesh)
        for fn in (steps.eval, steps.predict):
            assert "tpu_custom_call" in fn.lower(params, batch).compile().as_text()
    return aot.compile_train_step(steps, objective, mesh, per_chip * rows, seq, 20), devices


@pytest.mark.slow
def test_pretraining_and_finetuning_steps_compile_for_a_multi_host_slice():
    """v5e 2x4: 8 chips on 2 hosts, with fsdp and tensor parallelism and splash attention."""
    mesh_cfg = {"data": 2, "fsdp": 2, "tensor": 2}
    pre, devices = _compile("v5e:2x4", mesh_cfg, "pretraining", objectives.Pretraining())
    assert len({d.process_index for d in devices}) == 2
    cls, _ = _compile("v5e:2x4", mesh_cfg, "sequence_classification", objectives.Classification(),
                      eval_too=True)
    for c in (pre, cls):
        assert c.uses_splash
        kinds = {x.kind for x in c.collectives}
        assert "all-reduce" in kinds and "all-gather" in kinds  # fsdp gathers weights
        assert 0 < c.total_bytes < 16 * aot.GIB


def test_host_batch_slices_cover_the_batch_on_multi_host_and_multi_slice_topologies():
    cases = [("v5e:4x4", 1, {"data": -1, "fsdp": 4, "tensor": 1}),
             ("v5e:2x2", 2, {"data": -1, "fsdp": 1, "tensor": 2}),
             ("v5p:2x2x2", 1, {"data": 2, "fsdp": 2, "tensor": 2})]
    for topology, slices, mesh_cfg in cases:
        devices = aot.topology_devices(topology, slices)
        mesh = mesh_lib.make_mesh(mesh_cfg, devices)
        if slices > 1:
            # Slices are stacked on "data" only: each slice holds whole data rows of the mesh.
            by_slice = {}
            for idx, d in np.ndenumerate(mesh.devices):
                by_slice.setdefault(d.slice_index, set()).add(idx[0])
            assert all(not (a & b) for a in by_slice.values() for b in by_slice.values()
                       if a is not b)
        n = mesh.shape["data"] * mesh.shape["fsdp"]
        batch = 4 * n
        rows_of = mesh_lib.batch_sharding(mesh).devices_indices_map((batch,))
        held = {}
        for d, idx in rows_of.items():
            held.setdefault(d.process_index, set()).update(range(*idx[0].indices(batch)))
        seen = set()
        for p, rows in held.items():
            shard, num, local = mesh_lib.host_batch_slice(mesh, batch, process_index=p)
            assert local == len(rows)  # the rows it feeds are exactly those its chips hold
            assert num == len(held) and not (rows & seen)
            seen |= rows
        assert seen == set(range(batch)), topology


def _plan(*args, timeout=600):
    env = {**os.environ, "JAX_PLATFORMS": ""}  # plan runs on whatever host it is given
    return subprocess.run([sys.executable, "-m", "bertjax.tools.plan", "--config=configs/bert_tiny.py",
                           "--config.model.dtype=bfloat16", "--config.model.attention_dropout=0.0",
                           "--config.model.attention_backend=splash", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_plan_reports_compiled_memory_and_collectives_for_a_slice():
    r = _plan("--topology=v5e:2x2", "--config.mesh.data=1", "--config.mesh.fsdp=2",
              "--config.mesh.tensor=2", "--config.train.batch_size=16")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout.splitlines()[0])
    assert row["compiled"] and row["fits"] and row["uses_splash_kernel"]
    assert row["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2} and row["per_chip_batch"] == 8
    assert row["total_gib"] == pytest.approx(
        row["argument_gib"] + row["temp_gib"] + row["output_gib"] + row["code_gib"], abs=0.01)
    assert {"all-reduce", "all-gather"} <= {c["kind"] for c in row["collectives"]}
    # XLA's count and the model-FLOPs formula agree to within what the formula leaves out.
    assert row["xla_flops_per_chip"] == pytest.approx(row["model_flops_per_chip"], rel=0.25)
    assert "topology | model" in r.stdout


@pytest.mark.slow
def test_plan_refuses_a_config_that_does_not_fit():
    r = _plan("--topology=v5e:2x2", "--config.train.batch_size=262144")
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "GiB" in err[0] and "16 GiB" in err[0], r.stderr[-2000:]


def test_plan_rejects_an_unknown_topology():
    r = _plan("--topology=v9x:2x2")
    assert r.returncode == 2 and "unknown TPU topology" in r.stderr
