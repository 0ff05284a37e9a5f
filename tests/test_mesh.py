"""Mesh construction, parameter/optimizer shardings, global batches and distributed start-up
(including two real JAX processes on this machine)."""
import glob
import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import pretrain_support as ps
from bertjax.errors import UserError
from bertjax.train import distributed
from bertjax.train import mesh as meshlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _part(init, *names):
    return nnx.with_partitioning(init, names)


class TinyEncoder(nnx.Module):
    """Parameters named like the real model's, small enough to shard 8 ways."""

    def __init__(self, vocab=64, d=16, d_ff=32, rngs=None):
        normal = nnx.initializers.normal(0.02)
        self.word_embeddings = nnx.Embed(vocab, d, embedding_init=_part(normal, "vocab", "embed"), rngs=rngs)
        self.position_embeddings = nnx.Embed(12, d, embedding_init=_part(normal, "pos", "embed"), rngs=rngs)
        self.query = nnx.Linear(d, d, kernel_init=_part(normal, "embed", "heads"),
                                bias_init=_part(nnx.initializers.zeros, "heads"), rngs=rngs)
        self.intermediate = nnx.Linear(d, d_ff, kernel_init=_part(normal, "embed", "mlp"),
                                       bias_init=_part(nnx.initializers.zeros, "mlp"), rngs=rngs)
        self.layer_norm = nnx.LayerNorm(d, scale_init=_part(nnx.initializers.ones, "embed"),
                                        bias_init=_part(nnx.initializers.zeros, "embed"), rngs=rngs)


def _mesh(data, fsdp, tensor, n=None):
    devices = jax.devices()[: n or data * fsdp * tensor]
    return meshlib.make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor}, devices)


def _abstract_state(mesh, vocab=64):
    tx = optax.adamw(1e-3)

    def init():
        with nnx.logical_axis_rules(meshlib.DEFAULT_RULES):
            model = TinyEncoder(vocab=vocab, rngs=nnx.Rngs(0))
        params = nnx.state(model, nnx.Param)
        return {"step": jnp.zeros([], jnp.int32), "params": params, "opt_state": tx.init(params)}

    with jax.set_mesh(mesh):
        return init, jax.eval_shape(init)


def _spec_by_path(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): s.spec for p, s in flat}


def test_make_mesh_fills_minus_one_with_auto_axes():
    mesh = meshlib.make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert dict(_mesh(2, 1, 1).shape) == {"data": 2, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize("cfg, words", [
    ({"data": 3, "fsdp": 1, "tensor": -1}, ["3", "8"]),
    ({"data": -1, "fsdp": -1, "tensor": 1}, ["-1"]),
    ({"data": 2, "fsdp": 2, "tensor": 1}, ["4", "8", "-1"]),
    ({"data": 0, "fsdp": 1, "tensor": -1}, ["positive"]),
])
def test_make_mesh_rejects_impossible_shapes(cfg, words):
    with pytest.raises(UserError) as e:
        meshlib.make_mesh(cfg)
    for w in words:
        assert w in str(e.value)


def test_params_and_moments_share_shardings_and_jit_places_them():
    mesh = _mesh(2, 2, 2)
    init, abstract = _abstract_state(mesh)
    shardings = meshlib.state_shardings(abstract, mesh)
    specs = _spec_by_path(shardings)
    params = {k: v for k, v in specs.items() if k.startswith("['params']")}
    assert params["['params']['word_embeddings']['embedding'].value"] == P("tensor", "fsdp")
    assert params["['params']['position_embeddings']['embedding'].value"] == P(None, "fsdp")
    assert params["['params']['query']['kernel'].value"] == P("fsdp", "tensor")
    assert params["['params']['intermediate']['bias'].value"] == P("tensor")
    assert params["['params']['layer_norm']['scale'].value"] == P("fsdp")
    assert specs["['step']"] == P()
    for k, spec in params.items():
        for moment in ("mu", "nu"):
            assert specs[k.replace("['params']", f"['opt_state'][0].{moment}")] == spec
    assert specs["['opt_state'][0].count"] == P()

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    kernel = state["params"]["query"]["kernel"].get_value()
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (8, 8)


def test_undividable_dim_is_replicated():
    mesh = _mesh(1, 2, 4)
    _, abstract = _abstract_state(_mesh(1, 1, 1), vocab=30)
    specs = _spec_by_path(meshlib.state_shardings(abstract, mesh))
    # 30 rows do not split 4 ways over "tensor"; the hidden dim still splits over "fsdp".
    assert specs["['params']['word_embeddings']['embedding'].value"] == P(None, "fsdp")


def test_plain_array_moments_follow_their_parameter_by_path():
    mesh = _mesh(2, 2, 2)
    _, abstract = _abstract_state(mesh)
    params = abstract["params"]
    pure_moments = jax.eval_shape(optax.adam(1e-3).init, nnx.to_pure_dict(params))
    specs = _spec_by_path(meshlib.state_shardings({"params": params, "opt_state": pure_moments}, mesh))
    assert specs["['opt_state'][0].mu['query']['kernel']"] == P("fsdp", "tensor")
    assert specs["['opt_state'][0].nu['word_embeddings']['embedding']"] == P("tensor", "fsdp")


def test_restore_target_carries_shardings():
    mesh = _mesh(1, 4, 2)
    _, abstract = _abstract_state(mesh)
    target = meshlib.with_shardings(abstract, meshlib.state_shardings(abstract, mesh))
    leaf = target["params"]["intermediate"]["kernel"].get_value()
    assert isinstance(leaf, jax.ShapeDtypeStruct)
    assert leaf.sharding == NamedSharding(mesh, P("fsdp", "tensor"))


def test_global_batch_splits_rows_over_data_and_fsdp():
    mesh = _mesh(2, 2, 2)
    assert meshlib.host_batch_slice(mesh, 16) == (0, 1, 16)
    with pytest.raises(UserError, match="divisible"):
        meshlib.host_batch_slice(mesh, 6)
    local = {"input_ids": np.arange(16 * 4, dtype=np.int32).reshape(16, 4),
             "next_sentence_labels": np.arange(16, dtype=np.int32)}
    batch = meshlib.make_global_batch(local, mesh)
    assert batch["input_ids"].shape == (16, 4)
    assert batch["input_ids"].sharding.spec == P(("data", "fsdp"))
    # 4 row-groups over 8 devices: each device holds 4 rows, tensor-axis neighbours the same ones.
    assert {s.data.shape for s in batch["input_ids"].addressable_shards} == {(4, 4)}
    np.testing.assert_array_equal(np.asarray(batch["next_sentence_labels"]), local["next_sentence_labels"])


def test_single_process_initialize_reports_topology(monkeypatch):
    monkeypatch.setattr(distributed, "_topology", None)
    lines = []
    topo = distributed.initialize({"coordinator_address": "", "initialization_timeout": 5},
                                  environ={}, log=lines.append)
    assert topo.mode == "single" and topo.process_count == 1
    assert topo.global_device_count == topo.local_device_count == jax.device_count()
    assert lines == [f"[bertjax] {topo}"] and "process 0/1" in lines[0]
    assert distributed.initialize(None, environ={}, log=lines.append) is topo  # no second join


@pytest.mark.parametrize("env, words", [
    ({"BERTJAX_COORDINATOR": "10.0.0.1:1234", "BERTJAX_NUM_PROCESSES": "2",
      "BERTJAX_PROCESS_ID": "2"}, ["process id 2 of 2"]),
    ({"BERTJAX_COORDINATOR": "10.0.0.1", "BERTJAX_NUM_PROCESSES": "2"}, ["HOST:PORT"]),
    ({"BERTJAX_COORDINATOR": "10.0.0.1:1", "BERTJAX_NUM_PROCESSES": "two"}, ["not an integer"]),
])
def test_bad_cluster_settings_fail_before_joining(monkeypatch, env, words):
    monkeypatch.setattr(distributed, "_topology", None)
    with pytest.raises(UserError) as e:
        distributed.initialize({"coordinator_address": "", "num_processes": 1, "process_id": 0},
                               environ=env)
    for w in words:
        assert w in str(e.value)


def test_tpu_vm_detection_from_environment():
    assert distributed.on_tpu_vm({"TPU_ACCELERATOR_TYPE": "v5litepod-16"})
    assert distributed.on_tpu_vm({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"})


def test_a_machine_without_tpu_chips_stays_one_process(monkeypatch):
    """bertjax sets TPU runtime stand-ins where there are no chips (for compiling ahead of time);
    they must not send pretrain and finetune off to join a TPU slice."""
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        pytest.skip("this machine has TPU chips")
    monkeypatch.setattr(distributed, "_topology", None)
    topo = distributed.initialize(None, environ=dict(os.environ), log=lambda _: None)
    assert topo.process_count == 1


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORKER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {repo!r})
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from bertjax.errors import user_errors_exit
    from bertjax.train import checkpoint, distributed, mesh as m
    from bertjax.store import workdir
    from bertjax.tools import eval_retrieval as er

    @user_errors_exit
    def main():
        topo = distributed.initialize({{"initialization_timeout": int(sys.argv[1])}})
        mesh = m.make_mesh({{"data": -1, "fsdp": 2, "tensor": 1}})
        shard, num_shards, rows = m.host_batch_slice(mesh, 16)
        local = np.arange(rows, dtype=np.int32) + 1000 * shard
        batch = m.make_global_batch({{"x": local}}, mesh)
        total = jax.jit(lambda b: b["x"].sum())(batch)
        # A model axis across both hosts: both feed the same rows.
        wide = m.make_mesh({{"data": 1, "fsdp": 1, "tensor": -1}})
        wide_slice = m.host_batch_slice(wide, 16)
        wide_total = jax.jit(lambda b: b["x"].sum())(
            m.make_global_batch({{"x": np.arange(16, dtype=np.int32)}}, wide))

        # Every process takes part in saving and restoring one state sharded over both.
        values = np.arange(64, dtype=np.float32).reshape(16, 4)
        on = lambda mesh_, spec: NamedSharding(mesh_, spec)
        w = jax.make_array_from_callback((16, 4), on(mesh, P(("data", "fsdp"))), lambda i: values[i])
        state = {{"step": np.int32(5), "params": {{"w": w}}}}
        ck = checkpoint.Checkpointer(sys.argv[2], keep=2)
        ck.save(5, state, {{"pos": 5}}, {{"model": {{}}}})
        ck.wait()
        target = {{"step": jax.ShapeDtypeStruct((), np.int32, sharding=on(wide, P())),
                  "params": {{"w": jax.ShapeDtypeStruct((16, 4), np.float32, sharding=on(wide, P("tensor")))}}}}
        restored, data, _ = ck.restore(None, target)
        ck.close()
        params, report = checkpoint.load_params(sys.argv[2], {{"w": target["params"]["w"]}})
        if topo.process_index == 0:
            workdir.write_completed(sys.argv[2], 5)

        # Retrieval over the global mesh: each process holds only its own rows of the corpus.
        arrays = np.load(os.path.join(os.path.dirname(sys.argv[2]), "search.npz"))
        corpus, queries = arrays["corpus"], arrays["queries"]
        held = er.corpus_rows(len(corpus))
        found, scores = er.device_search(queries, corpus[held], 10, n_docs=len(corpus))
        same = jax.jit(lambda a, b: (a == b).all())
        print("RESULT", json.dumps(dict(process=topo.process_index, count=topo.process_count,
              devices=topo.global_device_count, shard=shard, num_shards=num_shards, rows=rows,
              shape=list(batch["x"].shape), total=int(total), wide=list(wide_slice),
              wide_total=int(wide_total), restored=bool(same(restored["params"]["w"], w)),
              loaded=bool(same(params["w"], w)), data=data, step=int(restored["step"]),
              corpus_rows=held.tolist(), found=found.tolist(), scores=scores.tolist())), flush=True)

    main()
""")


def _search_data(path):
    """33 rows over 8 devices: 5 a device, the last one padding only. Row 30 (process 1's)
    repeats row 2 (process 0's): a tie the merge must break the way one top-k does."""
    rng = np.random.default_rng(7)
    corpus = rng.normal(size=(33, 16)).astype(np.float32)
    corpus[30] = corpus[2]
    queries = rng.normal(size=(5, 16)).astype(np.float32)
    queries[0] = corpus[2]
    np.savez(path, corpus=corpus, queries=queries)
    return corpus, queries


def _launch(tmp_path, ids, n, timeout):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=REPO))
    port = _free_port()
    procs = []
    for i in ids:
        env = dict(os.environ, JAX_PLATFORMS="cpu", BERTJAX_COORDINATOR=f"127.0.0.1:{port}",
                   BERTJAX_NUM_PROCESSES=str(n), BERTJAX_PROCESS_ID=str(i))
        env["XLA_FLAGS"] = ps.xla_flags()
        procs.append(subprocess.Popen([sys.executable, str(script), str(timeout), str(tmp_path / "run")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return [(p, *p.communicate(timeout=120)) for p in procs]


def test_two_processes_share_batches_and_checkpoints(tmp_path):
    corpus, queries = _search_data(tmp_path / "search.npz")
    results = []
    for p, out, err in _launch(tmp_path, [0, 1], 2, 60):
        assert p.returncode == 0, err[-2000:]
        assert "[bertjax] process" in out
        results.append(json.loads(out.split("RESULT ", 1)[1]))
    assert sorted(r["process"] for r in results) == [0, 1]
    expected_total = sum(range(8)) + sum(range(1000, 1008))
    for r in results:
        assert (r["count"], r["devices"], r["num_shards"], r["rows"]) == (2, 8, 2, 8)
        assert r["shape"] == [16] and r["total"] == expected_total
        assert r["wide"] == [0, 1, 16] and r["wide_total"] == sum(range(16))
        assert r["restored"] and r["loaded"] and r["step"] == 5 and r["data"] == {"pos": 5}
    assert sorted(r["shard"] for r in results) == [0, 1]
    # Exact search over both processes' devices returns what one process with the same 8 devices
    # returns, ids and scores bit for bit.
    from bertjax.tools import eval_retrieval as er
    one_ids, one_scores = er.device_search(queries, corpus, 10)
    held = sorted(sum((r["corpus_rows"] for r in results), []))
    assert held == list(range(33))  # every row on exactly one process
    for r in results:
        np.testing.assert_array_equal(np.array(r["found"]), one_ids)
        np.testing.assert_array_equal(np.array(r["scores"], np.float32), one_scores)
    assert list(one_ids[0, :2]) == [2, 30]  # the tie: the lower row first
    assert json.loads((tmp_path / "run" / "COMPLETED").read_text())["step"] == 5


def test_missing_peer_ends_in_one_line_and_exit_2(tmp_path):
    [(p, out, err)] = _launch(tmp_path, [1], 2, 2)
    assert p.returncode == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: could not join the JAX cluster") and "within 2s" in last
