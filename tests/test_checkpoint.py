"""Orbax checkpoints: round trip, restore on other meshes, committed steps only, keep-last-K,
failures of async saves surfacing, params-only loading, and the COMPLETED marker."""
import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bertjax.errors import UserError
from bertjax.train import checkpoint as ckptlib
from bertjax.train import mesh as meshlib


def _part(init, *names):
    return nnx.with_partitioning(init, names)


class Tiny(nnx.Module):
    def __init__(self, vocab=32, d=16, head="mlm", rngs=None):
        normal = nnx.initializers.normal(0.5)
        self.word_embeddings = nnx.Embed(vocab, d, embedding_init=_part(normal, "vocab", "embed"), rngs=rngs)
        self.dense = nnx.Linear(d, 2 * d, kernel_init=_part(normal, "embed", "mlp"),
                                bias_init=_part(normal, "mlp"), rngs=rngs)
        self.layer_norm = nnx.LayerNorm(d, scale_init=_part(normal, "embed"),
                                        bias_init=_part(normal, "embed"), rngs=rngs)
        if head == "mlm":
            self.mlm = nnx.Linear(d, d, kernel_init=_part(normal, "embed", None), rngs=rngs)
        else:
            self.classifier = nnx.Linear(d, 3, kernel_init=_part(normal, "embed", "classes"), rngs=rngs)


def _mesh(data, fsdp, tensor):
    return meshlib.make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor},
                             jax.devices()[: data * fsdp * tensor])


@functools.lru_cache(maxsize=None)
def _host_state(seed=0, **kw):
    """One concrete state and its abstract shape per model variant. Shapes come from eval_shape and
    values from numpy: eager NNX init with sharding annotations costs seconds even for this size."""
    with jax.set_mesh(_mesh(1, 1, 1)), nnx.logical_axis_rules(meshlib.DEFAULT_RULES):
        params = nnx.state(nnx.eval_shape(lambda: Tiny(rngs=nnx.Rngs(0), **kw)), nnx.Param)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), params)
    opt_state = jax.tree.map(np.asarray, optax.adamw(1e-3).init(params))
    state = {"step": np.array(7, np.int32), "params": params, "opt_state": opt_state}
    return state, jax.eval_shape(lambda: state)


def _state_on(mesh, seed=0, **kw):
    """(concrete state, restore target) for `mesh`."""
    state, abstract = _host_state(seed, **kw)
    shardings = meshlib.state_shardings(abstract, mesh)
    return jax.device_put(state, shardings), meshlib.with_shardings(abstract, shardings)


def _assert_same(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A workdir with steps 1..3 saved from an 8-device mesh (data=2, fsdp=2, tensor=2)."""
    workdir = tmp_path_factory.mktemp("run")
    state, target = _state_on(_mesh(2, 2, 2))
    with ckptlib.Checkpointer(workdir, keep=2) as ck:
        for step in (1, 2, 3):
            state = {**state, "step": jnp.array(step, jnp.int32)}
            assert ck.save(step, state, {"epoch": 0, "batches": step * 10},
                           {"plan": {"model": {"hidden_size": 16}}})
    return workdir, state


def test_round_trip_and_keep_last_k(saved_run):
    workdir, state = saved_run
    ck = ckptlib.Checkpointer(workdir, keep=2)
    assert ck.all_steps() == [2, 3] and ck.latest_step() == 3
    _, target = _state_on(_mesh(2, 2, 2))
    restored, data, config = ck.restore(None, target)
    _assert_same(restored, state)
    assert data == {"epoch": 0, "batches": 30} and config == {"plan": {"model": {"hidden_size": 16}}}
    assert restored["params"]["dense"]["kernel"].get_value().sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    with pytest.raises(UserError, match="available: \\[2, 3\\]"):
        ck.restore(1, target)
    ck.close()


@pytest.mark.parametrize("shape", [(2, 1, 1), (1, 1, 1)])
def test_restore_onto_another_mesh(saved_run, shape):
    workdir, state = saved_run
    mesh = _mesh(*shape)
    _, target = _state_on(mesh)
    with ckptlib.Checkpointer(workdir, keep=2) as ck:
        restored, _, _ = ck.restore(3, target)
    _assert_same(restored, state)
    kernel = restored["params"]["dense"]["kernel"].get_value()
    assert kernel.sharding.mesh.devices.size == int(np.prod(shape))
    assert len(kernel.addressable_shards) == int(np.prod(shape))


def test_only_committed_steps_count(tmp_path):
    state, target = _state_on(_mesh(1, 1, 1))
    with ckptlib.Checkpointer(tmp_path, keep=3, async_=False) as ck:
        ck.save(1, state, {"pos": 1}, {})
    # What a kill during the save of step 2 leaves behind: Orbax's temporary dir, here even with
    # every item written, just never renamed (committed).
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(ckpts / "1", ckpts / "2.orbax-checkpoint-tmp")
    (ckpts / "2.orbax-checkpoint-tmp" / "data" / "metadata").write_text('{"pos": 2}')
    with ckptlib.Checkpointer(tmp_path, keep=3) as restarted:
        assert restarted.latest_step() == 1 and restarted.all_steps() == [1]
        _, data, _ = restarted.restore(None, target)
        assert data == {"pos": 1}
        # The restarted run's first save clears the leftover before writing.
        restarted.save(3, state, {"pos": 3}, {})
        restarted.wait()
        assert restarted.all_steps() == [1, 3]
    assert sorted(p.name for p in ckpts.iterdir()) == ["1", "3"]


def test_failed_async_save_surfaces(tmp_path, monkeypatch):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    state, target = _state_on(_mesh(1, 1, 1))
    ck = ckptlib.Checkpointer(tmp_path, keep=3, async_=True)
    ck.save(1, state, {"pos": 1}, {"a": 1})
    ck.wait()

    async def disk_full(self, item, directory):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", disk_full)
    assert ck.save(2, state, {"pos": 2}, {"a": 1})  # returns before the background write fails
    with pytest.raises(UserError) as e:
        ck.wait()
    msg = str(e.value)
    assert "step 2" in msg and "No space left" in msg and "last committed step is 1" in msg
    # Not calling wait(): the next save reports the failure instead of dropping it.
    ck.save(3, state, {"pos": 3}, {"a": 1})
    with pytest.raises(UserError, match="step 3"):
        ck.save(4, state, {"pos": 4}, {"a": 1})
    monkeypatch.undo()
    assert ck.latest_step() == 1
    restored, data, _ = ckptlib.Checkpointer(tmp_path, keep=3).restore(None, target)
    assert data == {"pos": 1}
    _assert_same(restored, state)


def _abstract_params(mesh, **kw):
    _, target = _state_on(mesh, **kw)
    return target["params"]


def test_load_params_from_a_run_reports_missing_and_unexpected(saved_run):
    workdir, state = saved_run
    mesh = _mesh(2, 1, 1)
    abstract = _abstract_params(mesh, head="classifier")
    fresh, _ = _state_on(mesh, seed=5, head="classifier")
    params, report = ckptlib.load_params(workdir, abstract, fallback=fresh["params"])
    assert report.missing == ["classifier/bias", "classifier/kernel"]
    assert report.unexpected == ["mlm/bias", "mlm/kernel"]
    assert "dense/kernel" in report.loaded and len(report.loaded) == 5
    assert report.model_config == {"hidden_size": 16}
    _assert_same(params["dense"], state["params"]["dense"])
    _assert_same(params["classifier"], fresh["params"]["classifier"])
    assert params["word_embeddings"]["embedding"].get_value().sharding.mesh.shape["data"] == 2
    assert "missing (freshly initialised) 2" in report.summary()


def test_load_params_refuses_shape_mismatch(saved_run):
    workdir, _ = saved_run
    abstract = _abstract_params(_mesh(1, 1, 1), vocab=40)
    with pytest.raises(UserError) as e:
        ckptlib.load_params(workdir, abstract)
    assert "word_embeddings/embedding: checkpoint (32, 16) vs model (40, 16)" in str(e.value)


def test_params_only_checkpoint_round_trip(tmp_path):
    state, _ = _state_on(_mesh(1, 2, 2))
    out = ckptlib.save_params(tmp_path / "converted", state["params"], {"hidden_size": 16},
                              extra_files={"vocab.txt": b"[PAD]\n[UNK]\n"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]
    assert (out / "vocab.txt").read_bytes() == b"[PAD]\n[UNK]\n"
    assert json.loads((out / "model_config.json").read_text()) == {"hidden_size": 16}
    with pytest.raises(UserError, match="already exists"):
        ckptlib.save_params(out, state["params"], {})
    abstract = _abstract_params(_mesh(1, 1, 1))
    params, report = ckptlib.load_params(out, abstract)
    assert report.missing == [] and report.unexpected == []
    assert report.model_config == {"hidden_size": 16}
    _assert_same(params, state["params"])
    with pytest.raises(UserError, match="holds no bertjax checkpoint"):
        ckptlib.load_params(tmp_path, abstract)


def test_completed_marker_is_written_whole(tmp_path):
    from bertjax.store import workdir

    workdir.write_completed(tmp_path / "run", 123)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["COMPLETED"]
    assert json.loads((tmp_path / "run" / "COMPLETED").read_text())["step"] == 123


def test_relative_workdir_saves_and_restores(tmp_path, monkeypatch):
    import jax.numpy as jnp

    from bertjax.train.checkpoint import Checkpointer

    monkeypatch.chdir(tmp_path)
    state = {"step": jnp.array(3, jnp.int32), "w": jnp.arange(6.0).reshape(2, 3)}
    with Checkpointer("runs/rel", keep=2, async_=True) as ck:
        ck.save(3, state, {"batches": 3}, {"model": {}})
        ck.wait()
        assert ck.latest_step() == 3
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                             sharding=x.sharding), state)
        restored, data, _ = ck.restore(3, target)
    assert data == {"batches": 3}
    np.testing.assert_array_equal(restored["w"], state["w"])
