"""The BERT optimizer: Adam without bias correction checked by hand, the weight-decay mask, the
schedules, and equality with optax.adamw when bias correction is on."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bertjax.config import base_config
from bertjax.errors import UserError
from bertjax.train import optim


def _cfg(**overrides):
    cfg = base_config("tiny").optim
    with cfg.unlocked():
        for k, v in overrides.items():
            cfg[k] = v
    return cfg


def test_no_bias_correction_matches_hand_computation():
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-6, 0.01
    tx, _ = optim.make_optimizer(
        _cfg(learning_rate=lr, b1=b1, b2=b2, eps=eps, weight_decay=wd, clip_norm=0.0,
             schedule="constant", warmup_steps=0, bias_correction=False), num_steps=10)
    params = {"w": jnp.array(2.0)}
    state = tx.init(params)
    m = v = 0.0
    w = 2.0
    for g in (0.5, -1.0, 3.0):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (math.sqrt(v) + eps) + wd * w)
        updates, state = tx.update({"w": jnp.array(g)}, state, params)
        params = optax.apply_updates(params, updates)
        assert float(params["w"]) == pytest.approx(w, rel=1e-6)


def test_first_step_without_bias_correction_is_larger_than_adams():
    # (1-b1)/sqrt(1-b2) = 0.1/sqrt(0.001) ~ 3.16 times Adam's unit first step; the recipe's warmup
    # keeps that harmless.
    def first(bias_correction):
        tx, _ = optim.make_optimizer(_cfg(learning_rate=1.0, weight_decay=0.0, clip_norm=0.0,
                                          schedule="constant", warmup_steps=0,
                                          bias_correction=bias_correction), num_steps=1)
        params = {"w": jnp.array(0.0)}
        return float(tx.update({"w": jnp.array(0.5)}, tx.init(params), params)[0]["w"])

    assert first(True) == pytest.approx(-1.0, rel=1e-4)
    assert first(False) == pytest.approx(-0.1 / math.sqrt(0.001), rel=1e-4)


def test_bias_correction_equals_optax_adamw():
    cfg = _cfg(learning_rate=1e-2, weight_decay=0.1, clip_norm=0.0, schedule="linear", warmup_steps=2,
               bias_correction=True)
    tx, schedule = optim.make_optimizer(cfg, num_steps=6)
    ref = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=0.1, mask=optim.decay_mask)
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.full((2,), 0.5)},
              "layer_norm": {"scale": jnp.ones((2,))}}
    mine, theirs = params, params
    s1, s2 = tx.init(mine), ref.init(theirs)
    for i in range(4):
        g = jax.tree.map(lambda p, k=i + 1: jnp.sin(p * k), mine)
        u1, s1 = tx.update(g, s1, mine)
        u2, s2 = ref.update(g, s2, theirs)
        mine, theirs = optax.apply_updates(mine, u1), optax.apply_updates(theirs, u2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), mine, theirs)
    assert jax.tree_util.tree_structure(s1) == jax.tree_util.tree_structure(s2)


def test_clipping_scales_gradients_to_the_global_norm():
    # eps=1 makes Adam's first step depend on the gradient's size, so clipping shows in the update.
    def first_update(clip_norm):
        tx, _ = optim.make_optimizer(_cfg(clip_norm=clip_norm, eps=1.0, schedule="constant",
                                          warmup_steps=0, learning_rate=1.0, weight_decay=0.0), 1)
        params = {"a": jnp.zeros(4)}
        updates, _ = tx.update({"a": jnp.full((4,), 10.0)}, tx.init(params), params)
        return np.asarray(updates["a"])

    clipped_g = 0.5  # 4 entries of 10 scaled to global norm 1
    np.testing.assert_allclose(first_update(1.0), -0.1 * clipped_g / (math.sqrt(1e-3) * clipped_g + 1),
                               rtol=1e-5)
    np.testing.assert_allclose(first_update(0.0), -0.1 * 10 / (math.sqrt(1e-3) * 10 + 1), rtol=1e-5)


class _Block(nnx.Module):
    def __init__(self, rngs):
        self.attention_output = nnx.Linear(4, 4, rngs=rngs)
        self.attention_norm = nnx.LayerNorm(4, rngs=rngs)
        self.LayerNorm = nnx.LayerNorm(4, rngs=rngs)
        self.ln_1 = nnx.LayerNorm(4, rngs=rngs)
        self.word_embeddings = nnx.Embed(8, 4, rngs=rngs)
        self.output_bias = nnx.Param(jnp.zeros(8))


def test_decay_mask_excludes_layer_norms_and_biases():
    params = nnx.state(_Block(nnx.Rngs(0)), nnx.Param)
    flat = {"/".join(optim._names(p)): m
            for p, m in jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]}
    assert flat == {
        "attention_norm/bias": False, "attention_norm/scale": False,
        "attention_output/bias": False, "attention_output/kernel": True,
        "layernorm/bias": False, "layernorm/scale": False,
        "ln_1/bias": False, "ln_1/scale": False,
        "output_bias": False, "word_embeddings/embedding": True,
    }
    # The mask works on nnx.State params inside the optimizer: LayerNorm scales are not decayed.
    tx, _ = optim.make_optimizer(_cfg(schedule="constant", warmup_steps=0, learning_rate=1.0,
                                      weight_decay=0.5, clip_norm=0.0), num_steps=1)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert float(jnp.abs(updates["attention_norm"]["scale"].get_value()).max()) == 0.0
    np.testing.assert_allclose(updates["attention_output"]["kernel"].get_value(),
                               -0.5 * params["attention_output"]["kernel"].get_value(), rtol=1e-6)


@pytest.mark.parametrize("name, expected", [
    ("linear", {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.55, 100: 0.1, 150: 0.1}),
    ("cosine", {0: 0.0, 10: 1.0, 55: 0.55, 100: 0.1, 150: 0.1}),
    ("constant", {0: 0.0, 5: 0.5, 10: 1.0, 100: 1.0}),
    ("rsqrt", {5: 0.5, 10: 1.0, 40: 0.5, 160: 0.25}),
])
def test_schedule_values_at_key_steps(name, expected):
    schedule = optim.make_schedule(name, 1.0, warmup_steps=10, num_steps=100, end_lr_fraction=0.1)
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, abs=1e-6), (name, step)
    # Cosine is halfway at the middle of the decay, above linear before it and below after.
    if name == "cosine":
        linear = optim.make_schedule("linear", 1.0, warmup_steps=10, num_steps=100, end_lr_fraction=0.1)
        assert float(schedule(32)) > float(linear(32)) and float(schedule(78)) < float(linear(78))


def test_bad_optimizer_settings_are_user_errors():
    with pytest.raises(UserError, match="optim.schedule"):
        optim.make_optimizer(_cfg(schedule="step"), 100)
    with pytest.raises(UserError, match="optim.name"):
        optim.make_optimizer(_cfg(name="sgd"), 100)
    with pytest.raises(UserError, match="warmup"):
        optim.make_optimizer(_cfg(warmup_steps=500), 100)


def _lamb_reference(params, grads_seq, *, lr, b1, b2, eps, wd, clip, excluded, split=()):
    """LAMB (You et al. 2019, Algorithm 2) in numpy, float64: clip by the global norm, Adam with
    bias correction, r = m_hat / (sqrt(v_hat) + eps) + wd * w, then per tensor
    w -= lr * (||w|| / ||r||) * r; tensors in `excluded` get no decay and a ratio of 1, and the
    ratio is 1 when either norm is 0. Each entry of `split` is a tensor holding several layers
    along axis 1 (the fused q/k/v kernel): there every slice [:, i] is a layer of its own."""
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    for t, grads in enumerate(grads_seq, start=1):
        g = {k: np.asarray(x, np.float64) for k, x in grads.items()}
        total = math.sqrt(sum((x ** 2).sum() for x in g.values()))
        if total > clip:
            g = {k: x * clip / total for k, x in g.items()}
        for k in w:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            r = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
            if k in excluded:
                w[k] = w[k] - lr * r
                continue
            r = r + wd * w[k]
            slices = [np.s_[:, i] for i in range(w[k].shape[1])] if k in split else [np.s_[...]]
            new = w[k].copy()
            for sl in slices:
                wn, rn = np.linalg.norm(w[k][sl]), np.linalg.norm(r[sl])
                ratio = wn / rn if wn > 0 and rn > 0 else 1.0
                new[sl] = w[k][sl] - lr * ratio * r[sl]
            w[k] = new
    return w


def test_lamb_matches_the_papers_update():
    lr, b1, b2, eps, wd, clip = 0.05, 0.9, 0.999, 1e-6, 0.01, 1.0
    tx, _ = optim.make_optimizer(
        _cfg(name="lamb", learning_rate=lr, b1=b1, b2=b2, eps=eps, weight_decay=wd, clip_norm=clip,
             schedule="constant", warmup_steps=0, bias_correction=True), num_steps=10)
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": jnp.asarray(rng.normal(0, 0.5, (4, 3)), jnp.float32),
                        "bias": jnp.asarray(rng.normal(0, 0.1, (3,)), jnp.float32)},
              "layer_norm": {"scale": jnp.ones((3,), jnp.float32)},
              "embed": {"embedding": jnp.asarray(rng.normal(0, 2.0, (5, 3)), jnp.float32)},
              "zero": {"kernel": jnp.zeros((2, 2), jnp.float32)},
              # The fused attention projection [hidden, q/k/v, heads, head_dim], q/k/v scaled apart.
              "qkv": {"kernel": jnp.asarray(rng.normal(0, 1.0, (3, 3, 2, 2)) * np.array(
                  [0.1, 1.0, 10.0])[None, :, None, None], jnp.float32)}}
    flat_names = {"dense.kernel": ("dense", "kernel"), "dense.bias": ("dense", "bias"),
                  "layer_norm.scale": ("layer_norm", "scale"),
                  "embed.embedding": ("embed", "embedding"), "zero.kernel": ("zero", "kernel"),
                  "qkv.kernel": ("qkv", "kernel")}
    grads_seq = []
    for _ in range(3):
        grads_seq.append(jax.tree.map(
            lambda p: jnp.asarray(rng.normal(0, 1.0, p.shape), jnp.float32), params))
    state = tx.init(params)
    mine = params
    for g in grads_seq:
        u, state = tx.update(g, state, mine)
        mine = optax.apply_updates(mine, u)
    flat = lambda tree: {n: np.asarray(tree[a][b]) for n, (a, b) in flat_names.items()}  # noqa: E731
    want = _lamb_reference(flat(params), [flat(g) for g in grads_seq], lr=lr, b1=b1, b2=b2,
                           eps=eps, wd=wd, clip=clip, excluded={"dense.bias", "layer_norm.scale"},
                           split={"qkv.kernel"})
    got = flat(mine)
    for name in flat_names:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=1e-6, err_msg=name)
    # The trust ratio is what moved each decayed tensor: by lr * ||w|| on the first step.
    first, _ = tx.update(grads_seq[0], tx.init(params), params)
    for a, b in (("dense", "kernel"), ("embed", "embedding")):
        step = float(jnp.linalg.norm(first[a][b]))
        assert step == pytest.approx(lr * float(jnp.linalg.norm(params[a][b])), rel=1e-5)
    # q, k and v each move by lr times their own norm, like the original's three kernels.
    for i in range(3):
        step = float(jnp.linalg.norm(first["qkv"]["kernel"][:, i]))
        assert step == pytest.approx(lr * float(jnp.linalg.norm(params["qkv"]["kernel"][:, i])),
                                     rel=1e-5)
    # A zero tensor moves by the plain Adam step (ratio 1), not by nothing.
    assert float(jnp.abs(first["zero"]["kernel"]).min()) > 0


def test_large_lamb_recipe_phases_and_accumulation():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                        "bert_large_lamb.py")
    spec = importlib.util.spec_from_file_location("bert_large_lamb", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    one, two = recipe.get_config("1"), recipe.get_config("2:4096")
    # The paper's batches and NVIDIA's steps, learning rates and warmups (the docstring's sources).
    assert (one.data.max_seq_length, one.train.batch_size, one.train.grad_accum_steps) == (128, 65536, 1)
    assert (two.data.max_seq_length, two.train.batch_size, two.train.grad_accum_steps) == (512, 32768, 8)
    assert (one.optim.learning_rate, one.train.num_steps, one.optim.warmup_steps) == (6e-3, 7038, 2001)
    assert (two.optim.learning_rate, two.train.num_steps, two.optim.warmup_steps) == (4e-3, 1563, 200)
    assert one.model.num_layers == 24 and one.optim.name == two.optim.name == "lamb"
    assert recipe.__doc__.count("bertjax pretrain") == 2
    optim.make_optimizer(two.optim, two.train.num_steps)  # the recipe's optimizer builds
    with pytest.raises(ValueError, match="does not divide"):
        recipe.get_config("1:3000")
    with pytest.raises(ValueError, match="PHASE"):
        recipe.get_config("3")


# The original BERT optimizer's exclusion list (google-research/bert optimization.py):
# exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"], searched in the variable's name;
# NVIDIA's LAMB recipe excludes the same tensors from the trust ratio. Written here on the "/"
# joined parameter path, independently of optim.is_decayed.
_ORIGINAL_EXCLUDE = ("LayerNorm", "layer_norm", "bias")
# The tiny pretraining model's decayed tensors, by name: every kernel and embedding, nothing else.
_DECAYED = {
    "bert/embeddings/word_embeddings/embedding", "bert/embeddings/position_embeddings/embedding",
    "bert/embeddings/token_type_embeddings/embedding",
    "bert/encoder/layers/0/attention/qkv/kernel", "bert/encoder/layers/0/attention/out/kernel",
    "bert/encoder/layers/0/intermediate/kernel", "bert/encoder/layers/0/output/kernel",
    "bert/pooler/dense/kernel", "mlm/transform/kernel", "nsp/dense/kernel"}


def _path_name(path) -> str:
    parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return "/".join(p for p in parts if p != "value")


def test_one_real_lamb_step_on_a_sharded_mesh_equals_the_float64_reference():
    """One train step of the real step function (make_steps) with optim.name="lamb" on a
    (data=2, fsdp=2, tensor=2) mesh of the tiny pretraining model, against _lamb_reference in
    float64 applied to the real parameter tree with the step's own gradient (read out by a
    keep-the-gradient optimizer on the same mesh and batch). The decay and trust-ratio exclusions
    of the reference come from the original's rule on the real paths, so an exclusion lost (or
    added) in bertjax, or a norm taken over one shard, fails here."""
    from bertjax.model import BertConfig, build_model
    from bertjax.train import mesh as mesh_lib, objectives
    from bertjax.train.step import make_steps

    B, S, P, V = 8, 16, 4, 64
    lr, b1, b2, eps, wd, clip = 0.02, 0.9, 0.999, 1e-6, 0.01, 1.0
    cfg = base_config("tiny")
    with cfg.unlocked():
        cfg.model.update(vocab_size=V, hidden_size=16, num_heads=2, intermediate_size=32,
                         num_layers=1, max_position_embeddings=S, hidden_dropout=0.0,
                         attention_dropout=0.0, attention_backend="xla")
    model_cfg = BertConfig.from_dict(cfg.model.to_dict())
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rng = np.random.default_rng(3)
    ids = rng.integers(5, V, (B, S)).astype(np.int32)
    ids[:, 0] = 2
    mask = (np.arange(S)[None] < rng.integers(8, S + 1, (B, 1))).astype(np.int32)
    batch = {"input_ids": ids * mask, "segment_ids": (np.arange(S)[None] >= 6).astype(np.int32) * mask,
             "input_mask": mask,
             "masked_lm_positions": np.stack([np.sort(rng.choice(np.arange(1, 8), P, replace=False))
                                              for _ in range(B)]).astype(np.int32),
             "masked_lm_ids": rng.integers(5, V, (B, P)).astype(np.int32),
             "masked_lm_weights": (rng.random((B, P)) < 0.8).astype(np.float32),
             "next_sentence_labels": rng.integers(0, 2, B).astype(np.int32)}

    def step(tx):
        fns = make_steps(lambda: build_model("pretraining", model_cfg), objectives.Pretraining(),
                         tx, mesh)
        state = fns.init()
        before = jax.device_get(state["params"])
        fsdp_split = any("fsdp" in str(x.sharding.spec)
                         for x in jax.tree.leaves(state["params"]))
        state, _ = fns.train(state, mesh_lib.make_global_batch(batch, mesh), jax.random.key(0))
        return before, jax.device_get(state["params"]), jax.device_get(state["opt_state"]), \
            fsdp_split

    keep_gradient = optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda g, state, params=None: (jax.tree.map(jnp.zeros_like, g), g))
    params, _, grads, fsdp_split = step(keep_gradient)
    assert fsdp_split, "no parameter is split over fsdp: the test would not cover FSDP"
    tx, _ = optim.make_optimizer(
        _cfg(name="lamb", learning_rate=lr, b1=b1, b2=b2, eps=eps, weight_decay=wd, clip_norm=clip,
             schedule="constant", warmup_steps=0, bias_correction=True), num_steps=10)
    params_again, got, _, _ = step(tx)

    flat = lambda tree: {_path_name(p): np.asarray(x)  # noqa: E731
                         for p, x in jax.tree_util.tree_leaves_with_path(tree)}
    w0, g, new = flat(params), flat(grads), flat(got)
    assert all(np.array_equal(w0[k], v) for k, v in flat(params_again).items())
    excluded = {k for k in w0 if any(x in k for x in _ORIGINAL_EXCLUDE)}
    assert set(w0) - excluded == _DECAYED, sorted(set(w0) - excluded)
    qkv = {k for k in w0 if k.endswith("attention/qkv/kernel")}
    want = _lamb_reference(w0, [g], lr=lr, b1=b1, b2=b2, eps=eps, wd=wd, clip=clip,
                           excluded=excluded, split=qkv)
    assert sorted(new) == sorted(want)
    for k in want:
        moved = np.abs(want[k] - w0[k]).max()
        assert moved > 0, k
        # To 1e-4 of how far the step moved the tensor (float32 against float64; 1e-5 seen).
        np.testing.assert_allclose(new[k], want[k], rtol=0, atol=1e-4 * moved, err_msg=k)
