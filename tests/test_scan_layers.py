"""model.scan_layers: one stacked layer run by nnx.scan, equal to the unrolled stack in outputs
and gradients (dropout on), with weights that move between the two layouts exactly: through the
Hugging Face mapping and through init_from checkpoints restored onto a sharded mesh."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx import traversals

from bertjax.interop.params import flat_params, set_flat_params
from bertjax.model import BertConfig, build_model
from bertjax.model import layer_stack as layout
from bertjax.train import checkpoint as ckpt_lib
from bertjax.train import objectives
from bertjax.train import mesh as mesh_lib
from bertjax.train.step import make_steps

CFG = BertConfig(vocab_size=1024, hidden_size=128, num_layers=3, num_heads=4,
                 intermediate_size=256, attention_backend="xla", attention_dropout=0.1)


def test_scan_layers_equals_unrolled():
    cfg = CFG
    unrolled = build_model("pretraining", cfg)
    scanned = build_model("pretraining", dataclasses.replace(cfg, scan_layers=True))
    set_flat_params(scanned, flat_params(unrolled))
    # The scanned model holds each parameter once, stacked: flat_params gives the per-layer view.
    assert flat_params(scanned).keys() == flat_params(unrolled).keys()
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(5, 1024, (2, 16)), jnp.int32)
    seg = jnp.zeros_like(ids)
    mask = jnp.ones_like(ids).at[1, 10:].set(0)
    pos = jnp.asarray([[1, 3], [2, 5]], jnp.int32)
    key = jax.random.key(3)  # dropout on: both must draw the same masks per layer

    def loss(model):
        out = model(ids, seg, mask, pos, dropout_key=key)
        return jnp.sum(out["mlm_logits"] ** 2) + jnp.sum(out["nsp_logits"])

    la, ga = nnx.jit(nnx.value_and_grad(loss))(unrolled)
    lb, gb = nnx.jit(nnx.value_and_grad(loss))(scanned)
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    flat_a = flat_params_of(ga)
    flat_b = flat_params_of(gb, per_layer=True)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_allclose(flat_a[k], flat_b[k], rtol=1e-4, atol=1e-4, err_msg=str(k))


def flat_params_of(grads, per_layer=False):
    flat = {k: np.asarray(v) for k, v in
            traversals.flatten_mapping(nnx.to_pure_dict(grads)).items()}
    return layout.per_layer(flat) if per_layer else flat


def _params(model):
    return {k: np.asarray(v) for k, v in
            traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}


def test_init_from_moves_weights_between_layouts_on_a_sharded_mesh(tmp_path):
    import optax

    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    unrolled = build_model("pretraining", CFG, seed=1)
    scanned_cfg = dataclasses.replace(CFG, scan_layers=True)
    ckpt_lib.save_params(tmp_path / "per_layer", nnx.state(unrolled, nnx.Param), CFG.to_dict())
    steps = make_steps(lambda: build_model("pretraining", scanned_cfg), objectives.make("mlm_nsp"),
                       optax.sgd(0.1), mesh)
    target = mesh_lib.with_shardings(steps.abstract_state, steps.state_shardings)["params"]
    params, report = ckpt_lib.load_params(tmp_path / "per_layer", target)
    assert not report.missing and not report.unexpected
    want = layout.stacked(_params(unrolled), CFG.num_layers)
    got = {k: np.asarray(v) for k, v in traversals.flatten_mapping(nnx.to_pure_dict(params)).items()}
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))
    qkv = [v for k, v in traversals.flatten_mapping(nnx.to_pure_dict(params)).items()
           if k[-2:] == ("qkv", "kernel")][0]
    assert qkv.sharding.spec[0] is None  # the layer axis stays whole; the rest is sharded

    # And back: a scanned checkpoint initialises an unrolled model.
    ckpt_lib.save_params(tmp_path / "stacked", params, scanned_cfg.to_dict())
    steps = make_steps(lambda: build_model("pretraining", CFG), objectives.make("mlm_nsp"),
                       optax.sgd(0.1), mesh)
    target = mesh_lib.with_shardings(steps.abstract_state, steps.state_shardings)["params"]
    back, report = ckpt_lib.load_params(tmp_path / "stacked", target)
    assert not report.missing and not report.unexpected
    got = {k: np.asarray(v) for k, v in traversals.flatten_mapping(nnx.to_pure_dict(back)).items()}
    for k, v in _params(unrolled).items():
        np.testing.assert_array_equal(got[k], v, err_msg=str(k))
