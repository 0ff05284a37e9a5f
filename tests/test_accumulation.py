"""Gradient accumulation is exact: accum=4 on a global batch gives the loss and the updated params
of accum=1 on the same batch, with the masked tokens spread very unevenly over the micro-batches
(a per-micro-batch normalisation fails this by far more than the tolerance)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bertjax.config import base_config
from bertjax.model import BertConfig, build_model
from bertjax.train import mesh as mesh_lib, objectives, optim
from bertjax.train.step import make_steps

B, S, P, V = 16, 16, 6, 50


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, (B, S)).astype(np.int32)
    ids[:, 0] = 2
    mask = np.ones((B, S), np.int32)
    mask[:, 12:] = 0
    pos = np.stack([np.sort(rng.choice(np.arange(1, 12), P, replace=False)) for _ in range(B)])
    # Micro-batch k (rows 4k..4k+3) has k+1 real predictions per row: 4, 8, 12, 16 in all.
    weights = np.zeros((B, P), np.float32)
    for r in range(B):
        weights[r, :r // 4 + 1] = 1.0
    return {"input_ids": ids, "segment_ids": np.zeros((B, S), np.int32), "input_mask": mask,
            "masked_lm_positions": pos.astype(np.int32),
            "masked_lm_ids": rng.integers(5, V, (B, P)).astype(np.int32),
            "masked_lm_weights": weights,
            "next_sentence_labels": rng.integers(0, 2, B).astype(np.int32)}


def _keep_gradient():
    """An "optimizer" whose state is the gradient it was given: reads the step's gradient out
    exactly, without subtracting params."""
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda g, state, params=None: (jax.tree.map(jnp.zeros_like, g), g))


def _one_step(accum, batch, tx=None):
    cfg = base_config("tiny")
    with cfg.unlocked():
        cfg.model.update(vocab_size=V, hidden_size=16, num_heads=2, intermediate_size=32,
                         num_layers=1, max_position_embeddings=S, hidden_dropout=0.0,
                         attention_dropout=0.0, attention_backend="xla")
        cfg.optim.update(learning_rate=1e-2, warmup_steps=0)
    model_cfg = BertConfig.from_dict(cfg.model.to_dict())
    tx = tx if tx is not None else optim.make_optimizer(cfg.optim, 10)[0]
    mesh = mesh_lib.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    fns = make_steps(lambda: build_model("pretraining", model_cfg), objectives.Pretraining(), tx,
                     mesh, grad_accum_steps=accum)
    state = fns.init()
    before = jax.device_get(state["params"])
    state, metrics = fns.train(state, mesh_lib.make_global_batch(batch, mesh), jax.random.key(0))
    return (float(metrics["loss"]), before, jax.device_get(state["params"]),
            jax.device_get(state["opt_state"]))


def _worst(a_tree, b_tree, scale_tree):
    """Largest |a - b| of a tensor over the largest |scale| of that tensor, over all tensors."""
    b = dict(jax.tree_util.tree_leaves_with_path(b_tree))
    s = dict(jax.tree_util.tree_leaves_with_path(scale_tree))
    return max(float(np.max(np.abs(x - b[p])) / (np.max(np.abs(s[p])) + 1e-30))
               for p, x in jax.tree_util.tree_leaves_with_path(a_tree))


def _whole_batch_loss(batch):
    """The loss of the whole batch, written out: MLM over all 40 masked tokens, NSP over 16 rows,
    evaluated with the same initial params."""
    cfg = BertConfig.from_dict(dict(
        base_config("tiny").model.to_dict(), vocab_size=V, hidden_size=16, num_heads=2,
        intermediate_size=32, num_layers=1, max_position_embeddings=S, hidden_dropout=0.0,
        attention_dropout=0.0, attention_backend="xla"))
    model = build_model("pretraining", cfg)
    out = model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["segment_ids"]),
                jnp.asarray(batch["input_mask"]), jnp.asarray(batch["masked_lm_positions"]))
    logp = jax.nn.log_softmax(np.asarray(out["mlm_logits"], np.float64), axis=-1)
    w = batch["masked_lm_weights"]
    ce = -np.take_along_axis(np.asarray(logp), batch["masked_lm_ids"][..., None], -1)[..., 0]
    nsp = jax.nn.log_softmax(np.asarray(out["nsp_logits"], np.float64), axis=-1)
    nsp_ce = -np.asarray(nsp)[np.arange(B), batch["next_sentence_labels"]]
    whole = (ce * w).sum() / (w.sum() + 1e-5) + nsp_ce.mean()
    # What normalising each micro-batch by its own counts and averaging would give.
    per_micro = np.mean([(ce[k] * w[k]).sum() / (w[k].sum() + 1e-5) + nsp_ce[k].mean()
                         for k in np.split(np.arange(B), 4)])
    return whole, per_micro


def test_accumulation_matches_one_large_batch():
    batch = _batch()
    assert batch["masked_lm_weights"].reshape(4, -1).sum(1).tolist() == [4, 8, 12, 16]
    whole, per_micro = _whole_batch_loss(batch)
    assert abs(per_micro - whole) > 1e-3 * whole  # the old rule: 1000x outside the tolerance

    # The loss and the gradient itself.
    loss1, _, _, grad1 = _one_step(1, batch, _keep_gradient())
    loss4, _, _, grad4 = _one_step(4, batch, _keep_gradient())
    assert loss1 == pytest.approx(whole, rel=1e-5)
    assert abs(loss4 - loss1) <= 1e-6 * abs(loss1)
    assert _worst(grad4, grad1, grad1) < 1e-6

    # The BERT optimizer (AdamW, no bias correction, clipping) on top: same params to fp32
    # rounding. Adam divides by sqrt(v) + 1e-6, so a gradient entry near 1e-6 turns its last-bit
    # summation-order noise into up to ~1e-3 * lr; the bound says that, not exact bits.
    _, _, adam1, _ = _one_step(1, batch)
    _, _, adam4, _ = _one_step(4, batch)
    assert _worst(adam4, adam1, adam1) < 1e-4
