"""Gradient accumulation is exact: accum=4 on a global batch gives the loss and the updated params
of accum=1 on the same batch, with the masked tokens spread very unevenly over the micro-batches
(a per-micro-batch normalisation fails this by far more than the tolerance)."""
import json

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
    # Over all parameters together (the norm of the difference over the norm of the params) the
    # two runs agree to the 1e-6: 2.3e-7 measured.
    diff = sum(float(np.sum((a - b) ** 2)) for a, b in zip(jax.tree.leaves(adam4),
                                                             jax.tree.leaves(adam1)))
    norm = sum(float(np.sum(b ** 2)) for b in jax.tree.leaves(adam1))
    assert (diff / norm) ** 0.5 < 1e-6
    # The values of docs/benchmarks.md's table (shown with pytest -s).
    values = {"whole_batch_loss": whole, "per_micro_batch_rule_loss": per_micro,
              "loss_accum1": loss1, "loss_accum4": loss4,
              "worst_grad_diff": _worst(grad4, grad1, grad1),
              "worst_adamw_param_diff": _worst(adam4, adam1, adam1),
              "adamw_param_diff_norm_ratio": (diff / norm) ** 0.5}
    print(json.dumps({k: float(v) for k, v in values.items()}))


@pytest.mark.parametrize("name", ["classification", "regression", "tokens", "span"])
def test_every_objective_sums_exactly_over_uneven_micro_batches(name):
    """Fine-tuning objectives, on fixed logits: four micro-batch losses divided by the whole
    batch's counts add up to the whole batch's loss, written out here in numpy, with padded
    rows (example_weight 0) and unlabelled tokens spread unevenly over the micro-batches."""
    rng = np.random.default_rng(1)
    n, s, k = 16, 6, 3
    rows = np.ones(n, np.float32)
    rows[[1, 2, 3, 9]] = 0.0  # eval-style filler rows, three of them in the first micro-batch
    logits = rng.normal(size=(n, s, k)).astype(np.float32)
    labels = rng.integers(0, k, (n, s)).astype(np.int32)

    def ce(lg, lb):
        lg = lg.astype(np.float64)
        z = lg - lg.max(-1, keepdims=True)
        return np.log(np.exp(z).sum(-1)) - np.take_along_axis(z, lb[..., None], -1)[..., 0]

    if name == "classification":
        obj = objectives.Classification()
        out, batch = {"logits": logits[:, 0]}, {"labels": labels[:, 0]}
        want = (ce(logits[:, 0], labels[:, 0]) * rows).sum() / rows.sum()
    elif name == "regression":
        obj = objectives.Regression()
        target = rng.normal(size=n).astype(np.float32)
        out, batch = {"logits": logits[:, 0, :1]}, {"labels": target}
        want = (((logits[:, 0, 0] - target) ** 2) * rows).sum() / rows.sum()
    elif name == "tokens":
        obj = objectives.TokenClassification()
        tw = (rng.random((n, s)) < np.linspace(0.1, 0.9, n)[:, None]).astype(np.float32)
        out, batch = {"logits": logits}, {"labels": labels, "label_weights": tw}
        w = tw * rows[:, None]
        want = (ce(logits, labels) * w).sum() / w.sum()
    else:
        obj = objectives.SpanQA()
        out = {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}
        batch = {"start_positions": labels[:, 0] % s, "end_positions": labels[:, 1] % s}
        per = 0.5 * (ce(logits[..., 0], labels[:, 0] % s) + ce(logits[..., 1], labels[:, 1] % s))
        want = (per * rows).sum() / rows.sum()
    batch = {**batch, "example_weight": rows}
    whole, _ = obj.loss(out, batch)
    denoms = obj.denominators(batch)
    parts = [obj.loss({kk: v[i:i + 4] for kk, v in out.items()},
                      {kk: v[i:i + 4] for kk, v in batch.items()}, denoms) for i in range(0, n, 4)]
    total = sum(float(p[0]) for p in parts)
    assert float(whole) == pytest.approx(want, rel=1e-5)
    assert total == pytest.approx(float(whole), rel=1e-6)
    num = sum(float(p[1]["loss"][0]) for p in parts)
    den = sum(float(p[1]["loss"][1]) for p in parts)
    assert num / den == pytest.approx(float(whole), rel=1e-6)  # the "loss" metric adds up too
