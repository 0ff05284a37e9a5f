"""Sentence embeddings: the InfoNCE loss over the global batch on the (data=2, fsdp=2, tensor=2)
mesh equals a float64 numpy reference and a one-device run (loss and gradients); the objectives'
declarations; the JSONL readers' one-line errors; CoSENT against its written-out definition."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import embedding_support as es
from bertjax.errors import UserError
from bertjax.evaluate import retrieval
from bertjax.finetuning import embedding_task
from bertjax.model import BertConfig, build_model
from bertjax.model.sentence import l2_normalize, pool
from bertjax.train import contrastive, mesh as mesh_lib, objectives
from bertjax.train.step import make_steps

B, N, H, S, V = 8, 2, 5, 12, 40
TAU = 0.05


def _np_infonce(q, p, n, valid, tau, symmetric):
    """float64 numpy: normalise, then CE of each query over all passages and valid negatives."""
    norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    q, p, n = norm(q), norm(p), norm(n)
    cands = np.concatenate([p, n.reshape(-1, n.shape[-1])])
    logits = q @ cands.T / tau
    ok = np.concatenate([np.ones(len(p)), valid.reshape(-1)]) > 0
    logits = np.where(ok[None], logits, -np.inf)

    def ce(z):
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - np.diag(z)))
    loss = ce(logits)
    if symmetric:
        loss = 0.5 * (loss + ce(p @ q.T / tau))
    return loss


def _np_grad(f, xs, eps=1e-6):
    grads = []
    for i, x in enumerate(xs):
        g = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            up, dn = [a.copy() for a in xs], [a.copy() for a in xs]
            up[i][idx] += eps
            dn[i][idx] -= eps
            g[idx] = (f(*up) - f(*dn)) / (2 * eps)
        grads.append(g)
    return grads


def _mesh222():
    return mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2))


@pytest.mark.parametrize("symmetric", [False, True])
def test_global_batch_infonce_on_mesh_equals_float64_reference(symmetric):
    """Each of the 4 batch shards holds 2 queries; every query's softmax runs over all 8
    passages and all valid negatives of the global batch, and the gradient reaches every shard's
    passages: equal to the float64 loss and its finite-difference gradient."""
    rng = np.random.default_rng(0)
    q, p, n = rng.normal(size=(B, H)), rng.normal(size=(B, H)), rng.normal(size=(B, N, H))
    valid = np.ones((B, N))
    valid[3, 1] = valid[6, 0] = 0.0  # rows with fewer negatives
    mesh = _mesh222()
    sh = mesh_lib.batch_sharding(mesh)

    def f(q, p, n, valid):
        return contrastive.infonce_loss(l2_normalize(q), l2_normalize(p), l2_normalize(n), valid,
                                        TAU, symmetric)[0]

    args = [jax.device_put(np.asarray(a, np.float32), sh) for a in (q, p, n, valid)]
    assert len(args[0].sharding.device_set) == 8 and args[1].addressable_shards[0].data.shape[0] == 2
    loss, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(*args)
    ref = lambda q, p, n: _np_infonce(q, p, n, valid, TAU, symmetric)  # noqa: E731
    np.testing.assert_allclose(float(loss), ref(q, p, n), rtol=1e-5)
    for g, r in zip(grads, _np_grad(ref, [q, p, n])):
        np.testing.assert_allclose(np.asarray(g), r, rtol=1e-4, atol=2e-5)
    # Masked negatives get no gradient; every other row's passage does (cross-shard negatives).
    assert np.all(np.asarray(grads[2])[3, 1] == 0) and np.all(np.asarray(grads[2])[6, 0] == 0)
    assert np.all(np.abs(np.asarray(grads[1])).sum(-1) > 0)


def _keep_gradient():
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda g, state, params=None: (jax.tree.map(jnp.zeros_like, g), g))


def _triplet_batch(seed=0):
    rng = np.random.default_rng(seed)

    def texts(*shape):
        ids = rng.integers(5, V, (*shape, S)).astype(np.int32)
        ids[..., 0] = 2
        mask = np.ones_like(ids)
        lengths = rng.integers(4, S + 1, shape)
        mask[np.arange(S) >= lengths[..., None]] = 0
        return np.where(mask > 0, ids, 0).astype(np.int32), mask
    qi, qm = texts(B)
    pi, pm = texts(B)
    ni, nm = texts(B, N)
    valid = np.ones((B, N), np.float32)
    valid[5, 1] = 0.0
    return {"input_ids": qi, "segment_ids": np.zeros_like(qi), "input_mask": qm, "passage_ids": pi, "passage_mask": pm,
            "negative_ids": ni, "negative_mask": nm, "negative_valid": valid}


def _model_step(mesh, objective, batch):
    cfg = BertConfig(vocab_size=V, hidden_size=16, num_heads=2, intermediate_size=32,
                     num_layers=1, max_position_embeddings=S, hidden_dropout=0.0,
                     attention_dropout=0.0, attention_backend="xla", num_labels=0)
    fns = make_steps(lambda: build_model("sentence_embedding", cfg, seed=3), objective,
                     _keep_gradient(), mesh)
    state = fns.init()
    state, metrics = fns.train(state, mesh_lib.make_global_batch(batch, mesh), jax.random.key(0))
    return float(metrics["loss"]), jax.device_get(state["opt_state"])


@functools.cache
def _one_device_reference():
    objective = objectives.make("infonce", num_negatives=N, symmetric=True)
    one = mesh_lib.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    return _model_step(one, objective, _triplet_batch())


def _assert_same_step(got, ref):
    (loss8, g8), (loss1, g1) = got, ref
    assert np.isfinite(loss1) and loss1 > 0
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    flat1 = dict(jax.tree_util.tree_leaves_with_path(g1))
    for path, g in jax.tree_util.tree_leaves_with_path(g8):
        ref = flat1[path]
        scale = np.max(np.abs(ref)) + 1e-12
        assert np.max(np.abs(g - ref)) / scale < 2e-4, jax.tree_util.keystr(path)


@pytest.mark.slow
def test_model_step_on_8_devices_equals_one_device():
    """The whole train step (encoder, mean pooling, normalisation, InfoNCE with hard negatives):
    loss and every parameter's gradient on the (2, 2, 2) mesh equal one device's."""
    objective = objectives.make("infonce", num_negatives=N, symmetric=True)
    _assert_same_step(_model_step(_mesh222(), objective, _triplet_batch()),
                      _one_device_reference())


@pytest.mark.slow
def test_gradient_cache_equals_uncached():
    """GradCache (task.mini_batch=2: queries and passages in 4 chunks, negatives in 8, each
    recomputed in the backward pass), on the 8-device mesh: the loss and gradients of the
    uncached one-device step."""
    objective = objectives.make("infonce", num_negatives=N, symmetric=True, mini_batch=2)
    _assert_same_step(_model_step(_mesh222(), objective, _triplet_batch()),
                      _one_device_reference())
    with pytest.raises(UserError, match="must divide"):
        _model_step(_mesh222(), objectives.make("infonce", mini_batch=3), _triplet_batch())


def test_contrastive_objectives_declare_themselves():
    for name in ("infonce", "cosent"):
        assert objectives.make(name).summable is False
    for name in ("cosine_mse", "sbert_softmax"):
        assert objectives.make(name).summable is True
    assert all(objectives.make(n).model_task == "sentence_embedding"
               for n in ("infonce", "cosent", "cosine_mse", "sbert_softmax"))
    spec = objectives.make("infonce", num_negatives=3, query_length=8).batch_spec(4, 16, 0)
    assert spec["input_ids"][0] == (4, 8) and spec["negative_ids"][0] == (4, 3, 16)
    assert "negative_ids" not in objectives.make("infonce").batch_spec(4, 16, 0)
    with pytest.raises(UserError, match="task.temperature must be > 0"):
        objectives.make("infonce", temperature=0.0)
    with pytest.raises(UserError, match="task.pooling"):
        objectives.make("infonce", pooling="max")


def test_grad_accumulation_refused_for_infonce():
    from types import SimpleNamespace

    from bertjax.config import finetune_config
    from bertjax.train import aot
    cfg = finetune_config("tiny", "embeddings")
    cfg.train.batch_size, cfg.train.grad_accum_steps = 8, 2
    plan = SimpleNamespace(num_steps=10, warmup_steps=0, task_model="sentence_embedding")
    with pytest.raises(UserError, match="cannot be summed over micro-batches"):
        aot.build_steps(cfg, plan, objectives.make("infonce"), None, None)


def test_cosent_equals_its_definition():
    rng = np.random.default_rng(1)
    cos, scores = rng.uniform(-1, 1, 6), np.array([0.0, 1.0, 0.5, 0.5, 2.0, 1.0])
    terms = [20 * (cos[i] - cos[j]) for i in range(6) for j in range(6) if scores[i] < scores[j]]
    ref = np.log1p(np.sum(np.exp(terms)))
    got = float(contrastive.cosent_loss(jnp.asarray(cos, jnp.float32), jnp.asarray(scores), 20.0))
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_pooling_modes():
    seq = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    np.testing.assert_allclose(pool(seq, mask, "cls"), seq[:, 0])
    np.testing.assert_allclose(pool(seq, mask, "last"), np.stack([seq[0, 2], seq[1, 1]]))
    np.testing.assert_allclose(pool(seq, mask, "mean"),
                               np.stack([seq[0, :3].mean(0), seq[1, :2].mean(0)]))


def test_jsonl_bad_inputs_are_one_line(tmp_path):
    ok = es.write_jsonl(str(tmp_path / "ok.jsonl"), es.triplets(3, 0))
    assert embedding_task.read_jsonl(ok)[0] == "triplets"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "a", "positive": "b"}) + "\n" + json.dumps({"query": "c"})
                   + "\n")
    with pytest.raises(UserError, match=r"line 2: missing field 'positive'"):
        embedding_task.read_jsonl(str(bad))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="holds no rows"):
        embedding_task.read_jsonl(str(empty))
    with pytest.raises(UserError, match="does not exist"):
        embedding_task.read_jsonl(str(tmp_path / "nope.jsonl"))
    (tmp_path / "j.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="line 1 is not a UTF-8 JSON object"):
        embedding_task.read_jsonl(str(tmp_path / "j.jsonl"))


def test_retrieval_metrics_by_hand():
    ranked = np.array([[2, 0, 1], [1, 2, 0]])
    m = retrieval.retrieval_metrics(ranked, [{0: 1.0}, {0: 1.0, 2: 1.0}])
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert m["recall@1"] == 0.0 and m["recall@10"] == 1.0
    ndcg2 = (1 / np.log2(3) + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert m["ndcg@10"] == pytest.approx((1 / np.log2(3) + ndcg2) / 2)
    idx, _ = retrieval.search(np.eye(3), np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1.0]]), k=2)
    assert idx[:, 0].tolist() == [1, 0, 2]
    assert retrieval.spearman([1, 2, 3, 4], [10, 20, 20, 40]) == pytest.approx(0.9486833)


def test_cosine_mse_and_softmax_losses():
    cos = jnp.array([0.5, -0.2, 0.9])
    scores = jnp.array([1.0, 0.0, 0.5])
    loss, sums = objectives.make("cosine_mse").loss({"cosine": cos}, {"scores": scores})
    np.testing.assert_allclose(float(loss), np.mean((np.array(cos) - np.array(scores)) ** 2),
                               rtol=1e-6)
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    loss, sums = objectives.make("sbert_softmax").loss({"logits": logits},
                                                       {"labels": jnp.array([0, 0])})
    ref = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0))])
    np.testing.assert_allclose(float(loss), ref, rtol=1e-6)
    assert float(sums["accuracy"][0]) == 1.0


def test_benchmark_tfidf_is_sklearns_and_wordnet_glosses_parse(tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer

    from bertjax.bench import embeddings as bench
    texts = ["The cat sat on the mat.", "A dog, a cat and a bird!", "bird song at dawn", "x"]
    ours = bench.TfIdf(texts)(texts)
    theirs = TfidfVectorizer().fit_transform(texts).toarray()  # columns: sorted vocabulary
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    (tmp_path / "data.verb").write_text(
        "  1 This software and database is provided \"as is\"\n"
        "00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 000 | draw air into, "
        "and expel out of, the lungs; \"I can breathe better now\"; \"she breathes deeply\"\n"
        "00002000 29 v 01 doze 0 000 | sleep lightly\n")
    got = bench.wordnet_glosses(str(tmp_path), "verb")
    assert got == [("verb-00001740", "draw air into, and expel out of, the lungs",
                    ["I can breathe better now", "she breathes deeply"])]


def test_a_start_models_pooling_and_prompts_unless_the_config_sets_them(tmp_path):
    """A start directory with our exporter's module files (CLS pooling, two prompts, no
    Normalize): the run takes its pooling and prompts; what the config sets wins, named in one
    line; prompts_from_start=false drops the start's prompts; a start without sentence settings
    gives mean pooling and no prompts, silently."""
    from bertjax.config import check_choices, finetune_config
    from bertjax.interop import sentence_transformers as st_interop
    st_interop.write_modules(str(tmp_path), 8, {"pooling": "cls", "normalize": False,
                                                "max_seq_length": 16,
                                                "prompts": {"query": "query: ",
                                                            "document": "passage: "}})
    cfg = finetune_config("tiny", "embeddings")
    check_choices(cfg)  # pooling "" is a choice
    cfg.init_from = str(tmp_path)

    def settings():
        logs = []
        got = embedding_task.sentence_settings(cfg, logs.append)
        return got, logs

    got, logs = settings()
    assert got == {"pooling": "cls", "normalize": True,
                   "prompts": {"query": "query: ", "document": "passage: "}}
    assert logs == [f"sentence settings of {tmp_path}: kept pooling 'cls', query prompt "
                    "'query: ', document prompt 'passage: '; the config's normalize True "
                    "(task.normalize; False there)"]
    cfg.task.pooling, cfg.task.normalize, cfg.task.query_prefix = "mean", False, "q: "
    got, logs = settings()
    assert got == {"pooling": "mean", "normalize": False,
                   "prompts": {"query": "q: ", "document": "passage: "}}
    assert len(logs) == 1 and logs[0].endswith(
        "kept document prompt 'passage: '; the config's pooling 'mean' (task.pooling; 'cls' "
        "there), query prompt 'q: ' (task.query_prefix; 'query: ' there)")
    cfg.task.query_prefix, cfg.task.prompts_from_start = "", False
    got, logs = settings()
    assert got["prompts"] == {"query": "", "document": ""}
    assert "document prompt '' (task.passage_prefix, task.prompts_from_start=false; " \
        "'passage: ' there)" in logs[0] and len(logs) == 1
    cfg.task.pooling, cfg.task.prompts_from_start = "", True
    cfg.init_from = ""
    assert settings() == ({"pooling": "mean", "normalize": False,
                           "prompts": {"query": "", "document": ""}}, [])
    cfg.task.pooling = "max"
    with pytest.raises(UserError, match="task.pooling='max' is not one of"):
        check_choices(cfg)
    # A start whose pooling bertjax lacks is refused, not trained with another one.
    cfg.task.pooling, cfg.init_from = "", str(tmp_path)
    with open(tmp_path / "1_Pooling" / "config.json", "w") as f:
        json.dump({"embedding_dimension": 8, "pooling_mode": "max"}, f)
    with pytest.raises(UserError, match="pooling max is not supported"):
        settings()


@pytest.mark.slow
def test_gradient_cache_shrinks_the_compiled_steps_memory():
    """What GradCache is for: with task.mini_batch=4 the compiled train step of a 32-row batch
    needs a fraction of the uncached step's temporary memory (XLA's own count), so a batch can
    exceed what one forward and backward pass holds."""
    from bertjax.train import aot
    cfg = BertConfig(vocab_size=V, hidden_size=32, num_heads=2, intermediate_size=64,
                     num_layers=1, max_position_embeddings=32, attention_backend="xla",
                     num_labels=0)
    mesh = mesh_lib.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    temp = {}
    for m in (0, 4):
        obj = objectives.make("infonce", mini_batch=m)
        fns = make_steps(lambda: build_model("sentence_embedding", cfg), obj, optax.sgd(0.1),
                         mesh)
        state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                             fns.abstract_state, fns.state_shardings)
        lowered = fns.train.lower(state, aot.abstract_batch(obj, 32, 32, 0, mesh),
                                  jax.random.key(0))
        temp[m] = lowered.compile().memory_analysis().temp_size_in_bytes
    assert temp[4] < 0.35 * temp[0], temp


@pytest.mark.parametrize("directions", [("query_to_doc",),
                                        ("query_to_doc", "query_to_query", "doc_to_query",
                                         "doc_to_doc"),
                                        ("query_to_doc", "doc_to_doc")])
def test_infonce_equals_sentence_transformers_mnrl(directions):
    """Our loss on the same normalised embeddings equals sentence-transformers'
    MultipleNegativesRankingLoss (scale 1/tau, joint partition) with two hard negatives each:
    the default and GTE's directions."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    rng = np.random.default_rng(2)
    q, p, n = rng.normal(size=(B, H)), rng.normal(size=(B, H)), rng.normal(size=(B, N, H))
    norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    q, p, n = norm(q), norm(p), norm(n)
    ours, _ = contrastive.infonce_loss(jnp.asarray(q), jnp.asarray(p), jnp.asarray(n),
                                       jnp.ones((B, N)), TAU, False, directions)
    mnrl = MultipleNegativesRankingLoss.__new__(MultipleNegativesRankingLoss)
    torch.nn.Module.__init__(mnrl)
    mnrl.__dict__.update(scale=1 / TAU, similarity_fct=lambda a, b: a @ b.T,
                         gather_across_devices=False, directions=directions,
                         partition_mode="joint", hardness_mode=None, hardness_strength=0.0)
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    theirs = mnrl.compute_loss_from_embeddings([t(q), t(p)] + [t(n[:, k]) for k in range(N)],
                                               None)
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)
    with pytest.raises(UserError, match="task.directions"):
        objectives.make("infonce", directions=("doc_to_doc",))
