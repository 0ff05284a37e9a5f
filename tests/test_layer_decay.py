"""optim.layer_decay: ELECTRA's layer-wise learning-rate decay. On real tiny task models, one
optimizer step with d = 0.8 moves each parameter by d**(L + 2 - depth) times the step with d = 1.0
(embeddings at depth 0, layer i at i + 1, pooler and heads at L + 2), per slice for scanned
stacks, and d = 1.0 changes neither the updates nor the optimizer state. The expected factors
are written out by hand below, per path, not computed by the code under test."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.nnx import traversals

from bertjax import config as config_lib
from bertjax.config import base_config
from bertjax.errors import UserError
from bertjax.model import BertConfig, build_model
from bertjax.train import optim

D = 0.8
L = 3
MODEL = BertConfig(vocab_size=64, hidden_size=16, num_layers=L, num_heads=2, intermediate_size=32,
                   max_position_embeddings=32, attention_backend="xla")

# L = 3: exponent L + 2 - depth, by path prefix.
EXPECTED = {
    "bert/embeddings": D ** 5,
    "bert/encoder/layers/0": D ** 4,
    "bert/encoder/layers/1": D ** 3,
    "bert/encoder/layers/2": D ** 2,
    "bert/pooler": 1.0,
    "classifier": 1.0,
}


def _optim_cfg(name="adamw", **overrides):
    cfg = base_config("tiny").optim
    with cfg.unlocked():
        # A constant rate from the first update (warmup would give it 0); clipping and weight
        # decay on, so the factor is checked on top of them.
        cfg.update(name=name, schedule="constant", warmup_steps=0, learning_rate=0.1,
                   weight_decay=0.01, clip_norm=1.0, **overrides)
    return cfg


def _params_and_grads(model_cfg, task="sequence_classification"):
    """The task model's real parameter tree (paths, shapes, nnx.State) holding random values:
    no zeros, so every update is non-zero and every ratio means something."""
    abstract = nnx.state(nnx.eval_shape(lambda: build_model(task, model_cfg)), nnx.Param)
    leaves, treedef = jax.tree.flatten(abstract)
    rng = np.random.default_rng(0)
    draw = lambda scale: jax.tree.unflatten(treedef, [  # noqa: E731
        jnp.asarray(scale * rng.normal(size=x.shape), x.dtype) for x in leaves])
    return draw(0.1), draw(1.0)


def _flat(tree) -> dict[str, np.ndarray]:
    pure = tree if isinstance(tree, dict) else nnx.to_pure_dict(tree)
    return {"/".join(map(str, k)): np.asarray(v)
            for k, v in traversals.flatten_mapping(pure).items()}


def _first_updates(model_cfg, params, grads, name="adamw", decays=(1.0, D)):
    """The first update of make_optimizer at each layer_decay, all in one jit (op by op takes
    5 times as long on CPU, one jit each nearly twice)."""
    txs = [optim.make_optimizer(_optim_cfg(name, layer_decay=d), num_steps=10,
                                model_cfg=model_cfg)[0] for d in decays]
    run = jax.jit(lambda g, p: [tx.update(g, tx.init(p), p)[0] for tx in txs])
    return [_flat(u) for u in run(grads, params)]


def _expected(path: str, table: dict):
    hits = [p for p in table if path == p or path.startswith(p + "/")]
    assert len(hits) == 1, f"{path}: {hits}"
    return hits[0], table[hits[0]]


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_each_parameter_moves_by_its_layer_factor(name):
    params, grads = _params_and_grads(MODEL)
    base, decayed = _first_updates(MODEL, params, grads, name)
    assert base.keys() == decayed.keys()
    seen = set()
    for path, u in base.items():
        prefix, factor = _expected(path, EXPECTED)
        seen.add(prefix)
        assert np.all(u != 0), path  # a ratio of zeros would prove nothing
        np.testing.assert_allclose(decayed[path], factor * u, rtol=1e-6, atol=0, err_msg=path)
    assert seen == set(EXPECTED)  # every depth is present in the tree


def test_scanned_layers_get_one_factor_per_slice():
    cfg = dataclasses.replace(MODEL, scan_layers=True)
    params, grads = _params_and_grads(cfg)
    base, decayed = _first_updates(cfg, params, grads)
    stacked = [p for p in base if p.startswith("bert/encoder/layers/")]
    assert stacked and all(base[p].shape[0] == L for p in stacked)
    per_slice = (D ** 4, D ** 3, D ** 2)  # layers 0, 1, 2
    for path, u in base.items():
        if path in stacked:
            for i, factor in enumerate(per_slice):
                np.testing.assert_allclose(decayed[path][i], factor * u[i], rtol=1e-6, atol=0,
                                           err_msg=f"{path}[{i}]")
        else:
            _, factor = _expected(path, EXPECTED)
            np.testing.assert_allclose(decayed[path], factor * u, rtol=1e-6, atol=0,
                                       err_msg=path)


def test_shared_layer_groups_take_their_last_layers_depth():
    # ALBERT-like: L = 4 layers over G = 2 shared entries (layers 0-1 run entry 0, layers 2-3
    # entry 1) and an E -> H embedding projection, which is an embedding (depth 0).
    cfg = dataclasses.replace(MODEL, num_layers=4, num_hidden_groups=2, embedding_size=8)
    params, grads = _params_and_grads(cfg)
    ref, decayed = _first_updates(cfg, params, grads)
    table = {"bert/embeddings": D ** 6, "bert/encoder/layers/0": D ** 4,  # last runner: layer 1
             "bert/encoder/layers/1": D ** 2,  # last runner: layer 3
             "bert/pooler": 1.0, "classifier": 1.0}
    assert "bert/embeddings/projection/kernel" in ref
    assert not any(p.startswith("bert/encoder/layers/2") for p in ref)
    for path, u in ref.items():
        _, factor = _expected(path, table)
        np.testing.assert_allclose(decayed[path], factor * u, rtol=1e-6, atol=0, err_msg=path)


def test_any_encoder_scope_and_heads_by_path():
    # ELECTRA pretraining's layout (generator and discriminator, both of depth L = 2), as a plain
    # dict: the rule reads paths, not the first component.
    w = lambda *s: jnp.ones(s, jnp.float32)  # noqa: E731
    layer = lambda: {"intermediate": {"kernel": w(4, 8)}, "output": {"bias": w(4)}}  # noqa: E731
    params = {
        "bert": {"embeddings": {"word_embeddings": {"embedding": w(10, 4)}},
                 "encoder": {"layers": {0: layer(), 1: layer()}}},
        "generator": {"embeddings": {"projection": {"kernel": w(4, 4)}},
                      "encoder": {"layers": {0: layer(), 1: layer()}}},
        "discriminator": {"dense": {"kernel": w(4, 4)}},
        "mlm": {"bias": w(10)},
    }
    grads = jax.tree.map(lambda x: x * 0.5, params)
    model = {"num_layers": 2, "num_hidden_groups": 0}
    base, decayed = _first_updates(model, params, grads)
    table = {"bert/embeddings": D ** 4, "generator/embeddings": D ** 4,
             "bert/encoder/layers/0": D ** 3, "generator/encoder/layers/0": D ** 3,
             "bert/encoder/layers/1": D ** 2, "generator/encoder/layers/1": D ** 2,
             "discriminator": 1.0, "mlm": 1.0}
    for path, u in base.items():
        _, factor = _expected(path, table)
        np.testing.assert_allclose(decayed[path], factor * u, rtol=1e-6, atol=0, err_msg=path)


def test_off_leaves_updates_and_state_exactly_as_before():
    params, grads = _params_and_grads(MODEL)
    old = {k: v for k, v in _optim_cfg().items() if k != "layer_decay"}  # a config from before
    assert "layer_decay" in _optim_cfg() and "layer_decay" not in old
    tx_old, _ = optim.make_optimizer(old, num_steps=10)
    tx_off, _ = optim.make_optimizer(_optim_cfg(layer_decay=1.0), num_steps=10, model_cfg=MODEL)
    tx_on, _ = optim.make_optimizer(_optim_cfg(layer_decay=D), num_steps=10, model_cfg=MODEL)
    # The state layout of the chain make_optimizer built before layer_decay existed (clip, Adam
    # without bias correction, masked decay, scheduled rate), which old checkpoints hold.
    before = optax.chain(optax.clip_by_global_norm(1.0),
                         optim.scale_by_adam_no_bias_correction(0.9, 0.999, 1e-6),
                         optax.add_decayed_weights(0.01, mask=optim.decay_mask),
                         optax.scale_by_learning_rate(lambda count: 0.1))
    layout = jax.tree.structure(before.init(params))
    assert jax.tree.structure(tx_old.init(params)) == layout
    assert jax.tree.structure(tx_off.init(params)) == layout
    # Stateless: a checkpoint saved at any layer_decay restores into a run at any other.
    assert jax.tree.structure(tx_on.init(params)) == layout

    def two_steps(tx, g, p):  # the second step runs on the moments of the first
        state, out = tx.init(p), []
        for _ in range(2):
            u, state = tx.update(g, state, p)
            out.append(u)
        return out, state

    (u_old, s_old), (u_off, s_off) = jax.jit(
        lambda g, p: (two_steps(tx_old, g, p), two_steps(tx_off, g, p)))(grads, params)
    assert jax.tree.structure(s_off) == jax.tree.structure(s_old)
    for x, y in zip(jax.tree.leaves(s_old), jax.tree.leaves(s_off)):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    for step in range(2):
        a, b = _flat(u_old[step]), _flat(u_off[step])
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(b[k], a[k], err_msg=f"step {step}: {k}")


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -1, "0.8", float("nan"), True])
def test_bad_values_are_one_line_user_errors(bad):
    cfg = {**_optim_cfg().to_dict(), "layer_decay": bad}  # a plain dict takes a string too
    with pytest.raises(UserError) as e:
        optim.make_optimizer(cfg, num_steps=10, model_cfg=MODEL)
    assert "optim.layer_decay" in str(e.value) and "\n" not in str(e.value)
    # ...and at parse, where every entry point checks the config.
    full = base_config("tiny").to_dict()
    full["optim"]["layer_decay"] = bad
    with pytest.raises(UserError) as e:
        config_lib.check_choices(full)
    assert "optim.layer_decay" in str(e.value) and "\n" not in str(e.value)


def test_good_values_pass_the_parse_check():
    for good in (1.0, 0.9, 0.8, 1e-3):
        cfg = base_config("tiny")
        cfg.optim.layer_decay = good
        config_lib.check_choices(cfg)
