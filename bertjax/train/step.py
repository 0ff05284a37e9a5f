"""Train and eval step factories: pure functions of (state, batch), jitted with explicit shardings.

The state is a plain pytree {"step", "params", "opt_state"}, plus "frozen" when the objective
trains only part of the model (its `trainable` filter): a distillation teacher or LoRA's base sits
there, with no gradient and no optimizer state. The model is rebuilt inside the step with
nnx.merge, so nothing but arrays crosses the jit boundary and the state can be donated.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bertjax.model import attention as attn_lib
from bertjax.train import mesh as mesh_lib


@dataclasses.dataclass
class StepFns:
    init: Callable  # () -> state, sharded per `state_shardings`
    train: Callable  # (state, batch, key) -> (state, metrics)
    eval: Callable  # (model_arrays(state), batch) -> sums
    predict: Callable | None  # (model_arrays(state), batch) -> outputs
    graphdef: Any
    abstract_state: Any
    state_shardings: Any


def model_arrays(state):
    """What eval and predict read from a train state (or its shardings): the trained params and
    the frozen part when there is one."""
    return {k: state[k] for k in ("params", "frozen") if k in state}


def _split_micro(batch, n):
    return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)


def _accumulate(loss_fn, grad_fn, objective, params, batch, key, k: int):
    """(loss, sums, grads) of a batch run as k micro-batches in sequence. Each divides by the
    counts of the WHOLE batch (objectives.py), so the sums equal one large batch's even when the
    masked tokens fall unevenly across micro-batches."""
    micro = _split_micro(batch, k)
    denoms = objective.denominators(batch)

    def body(carry, xs):
        i, mb = xs
        (loss_i, sums_i), g = grad_fn(params, mb, jax.random.fold_in(key, i), denoms)
        acc_g, acc_loss, acc_sums = carry
        return (jax.tree.map(jnp.add, acc_g, g), acc_loss + loss_i,
                jax.tree.map(jnp.add, acc_sums, sums_i)), None

    zeros_g = jax.tree.map(jnp.zeros_like, params)
    _, sums0 = jax.eval_shape(loss_fn, params, jax.tree.map(lambda x: x[0], micro), key, denoms)
    zeros_s = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums0)
    (grads, loss, sums), _ = jax.lax.scan(body, (zeros_g, jnp.zeros((), jnp.float32), zeros_s),
                                          (jnp.arange(k), micro))
    return loss, sums, grads


def _placed(fn, mesh):
    # Traced under the mesh so kernels XLA cannot partition (splash) run inside shard_map.
    @functools.wraps(fn)  # keeps the jit's name (train_step, ...) in HLO and profiles
    def wrapped(*args):
        with attn_lib.on_mesh(mesh, mesh_lib.BATCH_AXES, "tensor"):
            return fn(*args)
    return wrapped


def make_steps(model_fn: Callable[[], nnx.Module], objective, tx: optax.GradientTransformation,
               mesh, *, grad_accum_steps: int = 1, rules=mesh_lib.DEFAULT_RULES) -> StepFns:
    """Builds the jitted functions for one (model, objective, optimizer, mesh)."""

    trainable = objective.trainable
    frozen_filter = nnx.All(nnx.Param, nnx.Not(trainable))

    def init_state():
        _, params, frozen = nnx.split(model_fn(), trainable, frozen_filter)
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
        # Absent, not empty, when everything trains: the state (and so every checkpoint) keeps
        # the tree it had before frozen parts existed.
        if jax.tree.leaves(frozen):
            state["frozen"] = frozen
        return state

    graphdef = nnx.split(nnx.eval_shape(model_fn), trainable, frozen_filter)[0]
    abstract = jax.eval_shape(init_state)
    shardings = mesh_lib.state_shardings(abstract, mesh, rules)
    batch_sh = mesh_lib.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def merge(params, frozen):
        return nnx.merge(graphdef, params, jax.lax.stop_gradient(frozen))

    def train_step(state, batch, key):
        params, frozen = state["params"], state.get("frozen", {})

        def loss_fn(params, batch, key, denoms=None):
            out = objective.forward(merge(params, frozen), batch, key)
            return objective.loss(out, batch, denoms)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        key = jax.random.fold_in(key, state["step"])
        if grad_accum_steps == 1:
            (loss, sums), grads = grad_fn(params, batch, key)
        else:
            loss, sums, grads = _accumulate(loss_fn, grad_fn, objective, params, batch, key,
                                            grad_accum_steps)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # A non-finite step is not applied: the state stays the last good one, and the host stops
        # the run when it reads the flag (at the next log or checkpoint), so no bad state is saved.
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = {**state, "step": state["step"] + 1,
                     "params": keep(new_params, params),
                     "opt_state": keep(opt_state, state["opt_state"])}
        metrics = {"sums": sums, "loss": loss, "grad_norm": grad_norm,
                   "nonfinite": (~finite).astype(jnp.int32)}
        return new_state, metrics

    def eval_step(state, batch):
        model = merge(state["params"], state.get("frozen", {}))
        _, sums = objective.loss(objective.forward(model, batch, None), batch)
        return sums

    # Eval and predict take the model's arrays, {"params"[, "frozen"]}: see `model_arrays`.
    model_shardings = model_arrays(shardings)
    placed = functools.partial(_placed, mesh=mesh)
    train_step, eval_step = placed(train_step), placed(eval_step)
    predict_jit = None
    if hasattr(objective, "predict"):
        def predict_step(state, batch):
            model = merge(state["params"], state.get("frozen", {}))
            return objective.predict(objective.forward(model, batch, None))

        predict_jit = jax.jit(placed(predict_step), in_shardings=(model_shardings, batch_sh))

    return StepFns(
        init=jax.jit(init_state, out_shardings=shardings),
        train=jax.jit(train_step, in_shardings=(shardings, batch_sh, replicated),
                      out_shardings=(shardings, replicated), donate_argnums=0),
        eval=jax.jit(eval_step, in_shardings=(model_shardings, batch_sh),
                     out_shardings=replicated),
        predict=predict_jit,
        graphdef=graphdef,
        abstract_state=abstract,
        state_shardings=shardings,
    )
