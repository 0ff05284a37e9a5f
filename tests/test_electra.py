"""ELECTRA (objective.name=electra): the replaced-token-detection step's semantics pinned on its
own terms (masking rate and the 85/15 split, special tokens never chosen, labels = sample !=
original, no gradient from the discriminator into the generator, one set of shared embeddings),
and a real pretraining run that exports to the two Hugging Face directories transformers runs to
our logits, imports back as a pair, resumes and fine-tunes; plus its bad inputs."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import pretrain_support as ps
from cli_support import one_line, run_cli
from bertjax.interop import params as interop
from bertjax.load import model_files
from bertjax.model import BertConfig, build_model, count_params
from bertjax.train import objectives
from bertjax.train.rtd import max_masked

PAD, CLS, SEP, MASK = 0, 1, 2, 3
V = 120


def _objective(**kw):
    return objectives.make("electra", pad_id=PAD, cls_id=CLS, sep_id=SEP, mask_id=MASK, **kw)


def _batch(b, s, seed=0, preds=4):
    """Rows `[CLS] a.. [SEP] b.. [SEP] [PAD]..` of random lengths, with the prepared data's own
    masks applied at `preds` positions (the step must undo them)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(MASK + 1, V, (b, s))
    lengths = rng.integers(max(12, s // 6), s + 1, b)
    mask = (np.arange(s)[None] < lengths[:, None]).astype(np.int32)
    ids[:, 0] = CLS
    ids[np.arange(b), lengths - 1] = SEP
    ids[np.arange(b), lengths // 2] = SEP
    ids = np.where(mask > 0, ids, PAD)
    originals = ids.copy()
    pos = np.stack([np.sort(rng.choice(np.arange(1, n // 2), preds, replace=False))
                    for n in lengths])
    ids[np.arange(b)[:, None], pos] = MASK
    return originals, {"input_ids": jnp.asarray(ids, jnp.int32),
                       "segment_ids": jnp.zeros((b, s), jnp.int32),
                       "input_mask": jnp.asarray(mask),
                       "masked_lm_positions": jnp.asarray(pos, jnp.int32),
                       "masked_lm_ids": jnp.asarray(originals[np.arange(b)[:, None], pos],
                                                    jnp.int32),
                       "masked_lm_weights": jnp.ones((b, preds), jnp.float32)}


def _forward(obj, fake, batch, key):
    """The objective's forward, compiled once, with what the stand-in networks were given."""
    def run(batch, key):
        fake.seen = {}
        out = obj.forward(fake, batch, key)
        return out, dict(fake.seen)

    out, seen = jax.jit(run)(batch, key)
    fake.seen = seen
    return out


class Recorder:
    """A stand-in for the two networks: records what each is given. The generator's logits put
    all mass on `pick(originals at the positions, slot)`; the discriminator answers `disc`."""

    def __init__(self, originals, pick, disc=None):
        self.originals, self.pick, self.disc = originals, pick, disc
        self.seen = {}

    def generate(self, ids, seg, mask, positions, dropout_key=None):
        self.seen["generator_input"], self.seen["positions"] = ids, positions
        at = jnp.take_along_axis(jnp.asarray(self.originals), positions, axis=1)
        target = self.pick(at, jnp.arange(positions.shape[1])[None, :])
        return {"mlm_logits": 50.0 * jax.nn.one_hot(target, V)}

    def __call__(self, ids, seg, mask, dropout_key=None):
        self.seen["discriminator_input"] = ids
        logits = self.disc(ids) if self.disc else jnp.zeros(ids.shape, jnp.float32)
        return {"rtd_logits": logits}


def test_masking_rate_split_and_no_special_token_on_a_large_batch():
    b, s = 512, 128
    originals, batch = _batch(b, s)
    fake = Recorder(originals, lambda at, slot: at)
    out = _forward(_objective(), fake, batch, jax.random.key(7))
    assert np.array_equal(np.asarray(out["originals"]), originals)  # the data's masks undone

    pos = np.asarray(fake.seen["positions"])
    w = np.asarray(out["mlm_weights"]) > 0
    gen_in = np.asarray(fake.seen["generator_input"])
    rows = np.arange(b)[:, None]
    real = (originals != PAD).sum(1)
    # The reference's count: round(15% of the real tokens), clamped to [1, int(0.155 * S)].
    want = np.clip(np.round(0.15 * real), 1, int(0.155 * s))
    assert max_masked(0.15, s) == 19
    np.testing.assert_array_equal(w.sum(1), want)
    chosen = np.zeros_like(originals, bool)
    chosen[np.nonzero(w)[0], pos[w]] = True
    assert chosen.sum() == w.sum()  # distinct positions: no slot chosen twice
    assert 0.145 < chosen.sum() / real.sum() < 0.155
    assert not np.isin(originals[chosen], [PAD, CLS, SEP, MASK]).any()
    # 85% of the chosen become [MASK], the rest keep their token; none is replaced at random,
    # and nothing else changes.
    at = gen_in[rows, pos][w]
    kept = at == originals[rows, pos][w]
    assert np.all((at == MASK) | kept)
    assert abs(np.mean(at == MASK) - 0.85) < 0.02, np.mean(at == MASK)
    assert np.array_equal(gen_in[~chosen], originals[~chosen])


def test_labels_are_sample_differs_from_original_and_the_discriminator_is_scored_on_them():
    originals, batch = _batch(16, 48, seed=1)
    # Even slots sample the original token (a correct guess: labelled real), odd slots another.
    pick = lambda at, slot: jnp.where(slot % 2 == 0, at, MASK + 1 + (at - MASK) % (V - MASK - 1))  # noqa: E731
    fake = Recorder(originals, pick)
    obj = _objective()
    out = _forward(obj, fake, batch, jax.random.key(3))
    pos, w = np.asarray(out["positions"]), np.asarray(out["mlm_weights"]) > 0
    odd = w & (np.arange(pos.shape[1])[None, :] % 2 == 1)
    expected = np.zeros_like(originals, bool)
    expected[np.nonzero(odd)[0], pos[odd]] = True
    corrupted = np.asarray(fake.seen["discriminator_input"])
    np.testing.assert_array_equal(corrupted != originals, expected)

    real = originals != PAD
    _, sums = obj.loss(out, batch)
    assert float(sums["replaced_fraction"][0]) == expected.sum()
    assert float(sums["replaced_fraction"][1]) == real.sum()
    # A discriminator that answers exactly `expected` is scored perfect, its opposite never right.
    for sign, acc in ((1.0, 1.0), (-1.0, 0.0)):
        fake.disc = lambda ids, sign=sign: sign * jnp.where(jnp.asarray(expected), 30.0, -30.0)
        _, sums = obj.loss(_forward(obj, fake, batch, jax.random.key(3)), batch)
        f = objectives.finalize(sums)
        assert f["disc_accuracy"] == acc
        if sign > 0:
            assert f["disc_precision"] == f["disc_recall"] == 1.0 and f["disc_loss"] < 1e-12


def _tiny_electra(seed=0):
    cfg = BertConfig(vocab_size=V, hidden_size=48, num_layers=2, num_heads=3,
                     intermediate_size=37, embedding_size=24, max_position_embeddings=64,
                     arch="electra", pooler_act="gelu", generator_hidden_size=16,
                     generator_num_heads=2, generator_intermediate_size=20)
    return build_model("electra_pretraining", cfg, seed=seed)


def test_no_gradient_from_the_discriminator_loss_into_the_generator():
    model = _tiny_electra()
    _, batch = _batch(4, 32, seed=2)
    obj = _objective()

    def part(name):
        def f(m):
            _, sums = obj.loss(obj.forward(m, batch, jax.random.key(5)), batch)
            return sums[name][0]
        return nnx.to_pure_dict(nnx.jit(nnx.grad(f))(model))

    def norms(g, top):
        return {k: float(jnp.linalg.norm(v)) for k, v in
                nnx.traversals.flatten_mapping(g[top]).items()}

    disc = part("disc_loss")
    for top in ("generator", "mlm"):
        assert all(n == 0.0 for n in norms(disc, top).values()), top
    assert all(n > 0.0 for n in norms(disc, "discriminator").values())
    # The shared word embeddings learn from both losses (they sit under the discriminator).
    assert norms(disc, "bert")[("embeddings", "word_embeddings", "embedding")] > 0
    mlm = part("mlm_loss")
    assert all(n == 0.0 for n in norms(mlm, "discriminator").values())
    assert all(n > 0.0 for k, n in norms(mlm, "generator").items())


def test_the_shared_embeddings_are_one_set_of_arrays():
    model = _tiny_electra()
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "layer_norm"):
        assert getattr(model.generator.embeddings, name) is getattr(model.bert.embeddings, name)
    paths = set(nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    assert not any(p[:2] == ("generator", "embeddings") and p[2] != "projection" for p in paths)
    # Each network keeps its own E->H projection (E 24 -> 48 and 24 -> 16).
    assert model.bert.embeddings.projection.kernel.shape == (24, 48)
    assert model.generator.embeddings.projection.kernel.shape == (24, 16)
    # One array: a change through the discriminator's path is what the generator reads.
    model.bert.embeddings.word_embeddings.embedding[...] = jnp.zeros((V, 24))
    assert float(jnp.abs(model.generator.embeddings.word_embeddings.embedding[...]).sum()) == 0.0


# --- a real run: pretrain, export, import, resume, fine-tune ------------------------------------

@pytest.fixture(scope="module")
def electra_run(tmp_path_factory):
    """A real 6-step run of configs/electra.py:tiny, in-process (the CLI's own path is run by
    the export test and the bad-settings test; a subprocess here cost a JAX start-up)."""
    from bertjax import pretrain

    root = tmp_path_factory.mktemp("electra")
    data_dir, vocab = ps.prepare(str(root / "data"), nsp=False)
    args = ps.overrides(data_dir, vocab, **ps.ELECTRA, **{"train.num_steps": 6,
                                                          "train.checkpoint_every": 3})
    run = str(root / "run")
    pretrain.pretrain(ps.apply(_electra_recipe(), args), run)
    return run, data_dir, vocab, args


@pytest.fixture(scope="module")
def electra_export(electra_run, tmp_path_factory):
    """`bertjax export --format=hf` of the run, once for the tests that read it."""
    out = str(tmp_path_factory.mktemp("electra_export") / "hf")
    r = run_cli("export", f"--checkpoint={electra_run[0]}", "--format=hf", f"--out={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_a_run_logs_every_electra_metric(electra_run):
    run = electra_run[0]
    rows = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
    keys = set().union(*(r.keys() for r in rows))
    for m in ("mlm_accuracy", "disc_accuracy", "disc_precision", "disc_recall",
              "replaced_fraction", "sampled_accuracy"):
        assert f"train/{m}" in keys, keys
    plan = json.load(open(os.path.join(run, "run_plan.json")))
    assert plan["task_model"] == "electra_pretraining"


def test_export_is_two_hf_directories_that_transformers_runs_to_our_logits(
        electra_run, electra_export, tmp_path, capfd):
    from bertjax import pretrain

    run, out = electra_run[0], electra_export
    model, cfg, task, _, _ = model_files.load_model(run)
    assert task == "electra_pretraining"
    originals, batch = _batch(3, 24, seed=4, preds=3)
    ids = np.asarray(originals)
    ids = np.where(ids >= cfg.vocab_size, 5, ids)
    seg, mask = np.zeros_like(ids), (ids != PAD).astype(np.int64)
    positions = np.tile(np.arange(ids.shape[1]), (3, 1)).astype(np.int32)
    t = dict(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(seg),
             attention_mask=torch.tensor(mask))
    real = mask.astype(bool)
    for part, cls, ours in (
            ("discriminator", transformers.ElectraForPreTraining,
             lambda: model(ids, seg, mask)["rtd_logits"]),
            ("generator", transformers.ElectraForMaskedLM,
             lambda: model.generate(ids, seg, mask, positions)["mlm_logits"])):
        hf, info = cls.from_pretrained(os.path.join(out, part), output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
        with torch.no_grad():
            want = hf.eval()(**t).logits.numpy()
        assert np.abs(np.asarray(ours())[real] - want[real]).max() < 1e-4, part
        tok = transformers.AutoTokenizer.from_pretrained(os.path.join(out, part))
        vocab = open(os.path.join(out, part, "vocab.txt")).read().split("\n")
        words = "the cat sat on the mat".split()
        assert tok(" ".join(words))["input_ids"] == [
            vocab.index(w) for w in ["[CLS]", *words, "[SEP]"]]
    hf_cfg = json.load(open(os.path.join(out, "generator", "config.json")))
    assert (hf_cfg["hidden_size"], hf_cfg["embedding_size"]) == (16, 16)

    # The pair imports back as one pretraining checkpoint with the same weights...
    ckpt = str(tmp_path / "ckpt")
    r = run_cli("convert", f"--from_hf={out}", f"--out={ckpt}")
    assert r.returncode == 0, r.stderr[-2000:]
    back, back_cfg, back_task, _, _ = model_files.load_model(ckpt)
    assert back_task == "electra_pretraining" and back_cfg == cfg
    a, b = interop.flat_params(model), interop.flat_params(back)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    # ...that pretraining continues from (init_from), and either directory alone imports too.
    _, data_dir, vocab, args = electra_run
    capfd.readouterr()
    pretrain.pretrain(ps.apply(_electra_recipe(), args + [f"--config.init_from={ckpt}"]),
                      str(tmp_path / "continued"))
    logged = capfd.readouterr()
    assert "init_from" in logged.out + logged.err, logged.err[-2000:]
    for part, want_task in (("discriminator", "replaced_token_detection"),
                            ("generator", "masked_lm")):
        _, _, got, report, _ = model_files.load_model(os.path.join(out, part))
        assert got == want_task and not report["missing"] and not report["unexpected"]


def test_a_pair_whose_embeddings_differ_is_refused(electra_export, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    out = str(tmp_path / "hf")
    shutil.copytree(electra_export, out)
    f = os.path.join(out, "generator", "model.safetensors")
    t = load_file(f)
    t["electra.embeddings.word_embeddings.weight"] += 1.0
    save_file(t, f, metadata={"format": "pt"})
    r = run_cli("convert", f"--from_hf={out}", f"--out={tmp_path / 'ckpt'}")
    one_line(r, "embeddings differ", "word_embeddings")


def test_fine_tuning_starts_from_the_discriminator_with_layer_decay(electra_run, tmp_path):
    import toy_tasks as toy

    glue = str(tmp_path / "glue")
    toy.make_toy_glue_dir(glue, "sst2", n_train=32, n_dev=16, n_test=4)
    work = str(tmp_path / "ft")
    r = subprocess.run(
        [sys.executable, "-m", "bertjax.finetune", "--config=configs/glue.py:sst2",
         f"--workdir={work}", f"--config.init_from={electra_run[0]}",
         f"--config.task.data_dir={glue}", "--config.task.epochs=1",
         "--config.data.max_seq_length=32", "--config.train.batch_size=16",
         "--config.optim.layer_decay=0.8", "--config.train.plot=False"],
        cwd=ps.ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    plan = json.load(open(os.path.join(work, "seed-0", "run_plan.json")))
    # The discriminator's encoder, GELU classifier head and all: ELECTRA's shape, not BERT's.
    assert plan["model"]["arch"] == "electra" and plan["model"]["pooler_act"] == "gelu"
    assert plan["init_from"] == electra_run[0]
    assert json.load(open(os.path.join(work, "seed-0", "config.json")))["optim"]["layer_decay"] == 0.8


@pytest.mark.slow
def test_ner_and_squad_fine_tune_from_the_discriminator(electra_run, tmp_path):
    import toy_tasks as toy
    from finetune_support import recipe, tiny

    from bertjax.finetuning import run as ft_run

    ner_dir = tmp_path / "ner"
    toy.make_toy_conll(str(ner_dir), n_train=32, n_dev=16, n_test=8)
    cfg = tiny(recipe("ner"), electra_run[0], epochs=1)
    cfg.task.data_dir = str(ner_dir)
    runs = {"ner": (cfg, ("f1",))}
    toy.make_toy_squad(str(tmp_path / "train.json"), "1.1", n_paragraphs=4, seed=1)
    toy.make_toy_squad(str(tmp_path / "dev.json"), "1.1", n_paragraphs=2, seed=2)
    cfg = tiny(recipe("squad", "v1"), electra_run[0], seq=64, epochs=1)
    cfg.task.data_dir, cfg.task.train_file, cfg.task.predict_file = (str(tmp_path), "train.json",
                                                                     "dev.json")
    cfg.task.doc_stride, cfg.task.max_query_length = 24, 16
    runs["squad"] = (cfg, ("f1", "exact"))
    for name, (cfg, keys) in runs.items():
        work = str(tmp_path / name / "work")
        dev = ft_run.finetune(cfg, work)["runs"][0]["dev"]
        assert all(np.isfinite(dev[k]) for k in keys), (name, dev)
        plan = json.load(open(os.path.join(work, "seed-0", "run_plan.json")))
        assert plan["model"]["arch"] == "electra" and plan["init_from"] == electra_run[0], name


@pytest.mark.parametrize("override, needle", [
    ("--config.model.generator_hidden_size=48", "wider than the discriminator"),
    ("--config.objective.mask_rate=1.5", "mask_rate=1.5 must be in (0, 1)"),
    ("--config.objective.mask_rate=0", "must be in (0, 1)"),
])
def test_bad_electra_settings_end_in_one_line(electra_run, tmp_path, override, needle):
    _, _, _, args = electra_run
    r = ps.run_pretrain(str(tmp_path / "bad"), args + [override], config="configs/electra.py:tiny")
    one_line(r, needle)


def test_an_electra_checkpoint_with_another_vocabulary_is_refused_by_a_bert_task(electra_run,
                                                                                 tmp_path):
    import toy_tasks as toy

    glue = str(tmp_path / "glue")
    toy.make_toy_glue_dir(glue, "sst2", n_train=16, n_dev=8, n_test=4)
    # The toy tasks' vocabulary is not the one the ELECTRA run was pretrained with.
    tok = toy.toy_tokenizer(str(tmp_path / "vocab"))
    r = subprocess.run(
        [sys.executable, "-m", "bertjax.finetune", "--config=configs/glue.py:sst2",
         f"--workdir={tmp_path / 'ft'}", f"--config.init_from={electra_run[0]}",
         f"--config.task.data_dir={glue}", f"--config.task.vocab={tok.vocab_path}"],
        cwd=ps.ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True, text=True, timeout=300)
    one_line(r, "tokenizer mismatch", "init_from", "vocab_size")


# --- embedding sharing (objective.embedding_sharing: plain | gdes | none) -----------------------

def _tiny_cfg():
    return BertConfig(vocab_size=V, hidden_size=48, num_layers=2, num_heads=3,
                      intermediate_size=37, embedding_size=24, max_position_embeddings=64,
                      arch="electra", pooler_act="gelu", generator_hidden_size=16,
                      generator_num_heads=2, generator_intermediate_size=20)


def _flat(model):
    return {k: np.asarray(v) for k, v in nnx.traversals.flatten_mapping(
        nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}


def _term_grads(model, obj, batch):
    """{term: the largest |gradient| of each parameter} for the MLM and the discriminator loss
    terms (their summed numerators), each differentiated alone, in one compile."""
    def term(m, name):
        _, sums = obj.loss(obj.forward(m, batch, jax.random.key(5)), batch)
        return sums[name][0]

    @nnx.jit
    def both(m):
        return {n: nnx.grad(lambda m, n=n: term(m, n))(m) for n in ("mlm_loss", "disc_loss")}

    return {n: {k: float(jnp.abs(v).max()) for k, v in nnx.traversals.flatten_mapping(
        nnx.to_pure_dict(g)).items()} for n, g in both(model).items()}


def test_gdes_mlm_gradients_reach_only_the_shared_table_and_rtd_only_the_residual():
    obj = _objective(embedding_sharing="gdes", generator_num_layers=1)
    model = obj.build("electra_pretraining", _tiny_cfg())
    word = ("bert", "embeddings", "word_embeddings")
    shared, residual = word + ("embedding",), word + ("residual",)
    flat = _flat(model)
    assert not flat[residual].any() and flat[residual].shape == flat[shared].shape == (V, 24)
    # One shared array: it is the generator's table, stored once (at the discriminator's path).
    assert model.bert.embeddings.word_embeddings.embedding is \
        model.generator.embeddings.word_embeddings.embedding
    assert not any(k[:3] == ("generator", "embeddings", "word_embeddings") for k in flat)
    # Half depth: one generator layer under a two-layer discriminator.
    assert model.generator.config.num_layers == 1 and model.bert.config.num_layers == 2
    # A non-zero residual, so the discriminator's table differs from the generator's (a zero
    # residual would hide a residual that is read nowhere).
    model.bert.embeddings.word_embeddings.residual[...] = 0.01 * jax.random.normal(
        jax.random.key(1), (V, 24))
    _, batch = _batch(4, 32, seed=2)
    grads = _term_grads(model, obj, batch)
    mlm, disc = grads["mlm_loss"], grads["disc_loss"]
    assert mlm[shared] > 0 and mlm[residual] == 0.0
    assert disc[residual] > 0 and disc[shared] == 0.0
    # The rest as in ELECTRA: each loss reaches its own network, the other's exactly not (the
    # discriminator's own position and segment tables and LayerNorm included).
    disc_side = [k for k in mlm if k[0] in ("bert", "discriminator") and k != shared]
    gen_side = [k for k in mlm if k[0] in ("generator", "mlm")]
    assert ("bert", "embeddings", "position_embeddings", "embedding") in disc_side
    assert all(mlm[k] == 0.0 for k in disc_side) and all(disc[k] == 0.0 for k in gen_side)
    assert mlm[("mlm", "bias")] > 0 and disc[("discriminator", "dense_prediction", "kernel")] > 0


def test_plain_is_todays_model_and_none_keeps_two_sets_of_embeddings():
    cfg = _tiny_cfg()
    _, batch = _batch(4, 32, seed=3)
    plain = _objective()  # embedding_sharing defaults to plain, generator_num_layers to 0
    assert (plain.embedding_sharing, plain.generator_num_layers) == ("plain", 0)
    # The registry's model (what export, convert and init_from build) and the objective's are
    # one tree with the same values, and they give the same losses.
    ours, registry = plain.build("electra_pretraining", cfg, seed=4), \
        build_model("electra_pretraining", cfg, seed=4)
    a, b = _flat(ours), _flat(registry)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert not any(k[-1] == "residual" for k in a)
    losses = nnx.jit(lambda m: plain.loss(plain.forward(m, batch, jax.random.key(7)), batch))
    (la, sa), (lb, sb) = losses(ours), losses(registry)
    assert float(la) == float(lb) and np.isfinite(float(la))
    assert all(float(sa[k][0]) == float(sb[k][0]) for k in sa)

    none = _objective(embedding_sharing="none")
    model = none.build("electra_pretraining", cfg, seed=4)
    flat = _flat(model)
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        d, g = ("bert", "embeddings", name, "embedding"), ("generator", "embeddings", name,
                                                           "embedding")
        assert d in flat and g in flat and flat[d].shape == flat[g].shape
        assert not np.array_equal(flat[d], flat[g]), name
    assert model.generator.embeddings.word_embeddings is not \
        model.bert.embeddings.word_embeddings
    # Two tables: the discriminator's takes only the RTD loss, the generator's only the MLM loss.
    grads = _term_grads(model, none, batch)
    mlm, disc = grads["mlm_loss"], grads["disc_loss"]
    d, g = ("bert", "embeddings", "word_embeddings", "embedding"), \
        ("generator", "embeddings", "word_embeddings", "embedding")
    assert mlm[g] > 0 and mlm[d] == 0.0 and disc[d] > 0 and disc[g] == 0.0
    # Exactly two embedding sets' worth of word-table parameters over plain's one.
    assert count_params(model) - count_params(ours) == V * 24 + 64 * 24 + 2 * 24 + 2 * 24


def test_bad_embedding_sharing_and_generator_depth_end_in_one_line():
    from bertjax.config import base_config, check_choices
    from bertjax.errors import UserError

    cfg = base_config("tiny")
    cfg.objective.embedding_sharing = "tied"
    with pytest.raises(UserError, match="objective.embedding_sharing='tied' is not one of"):
        check_choices(cfg)
    with pytest.raises(UserError, match="generator_num_layers=-1 must be >= 0"):
        _objective(generator_num_layers=-1)
    with pytest.raises(UserError, match=r"generator_num_layers=3 must be in \[0, 2\]"):
        _objective(generator_num_layers=3).build("electra_pretraining", _tiny_cfg())


def _check_pair_parity(model, out, disc_table, gen_table, gen_layers):
    originals, _ = _batch(3, 24, seed=4, preds=3)
    ids = np.asarray(originals)
    vocab = model.bert.config.vocab_size
    ids = np.where(ids >= vocab, 5, ids)  # a real run's vocabulary is smaller than V
    seg, mask = np.zeros_like(ids), (ids != PAD).astype(np.int64)
    positions = np.tile(np.arange(ids.shape[1]), (3, 1)).astype(np.int32)
    t = dict(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(seg),
             attention_mask=torch.tensor(mask))
    real = mask.astype(bool)
    for part, cls, ours, table in (
            ("discriminator", transformers.ElectraForPreTraining,
             lambda: model(ids, seg, mask)["rtd_logits"], disc_table),
            ("generator", transformers.ElectraForMaskedLM,
             lambda: model.generate(ids, seg, mask, positions)["mlm_logits"], gen_table)):
        hf, info = cls.from_pretrained(os.path.join(out, part), output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
        got = hf.electra.embeddings.word_embeddings.weight.detach().numpy()
        np.testing.assert_array_equal(got, np.asarray(table), err_msg=part)
        with torch.no_grad():
            want = hf.eval()(**t).logits.numpy()
        assert np.abs(np.asarray(ours())[real] - want[real]).max() < 1e-4, part
    gen = json.load(open(os.path.join(out, "generator", "config.json")))
    assert gen["num_hidden_layers"] == gen_layers
    assert json.load(open(os.path.join(out, "discriminator", "config.json")))[
        "num_hidden_layers"] == 2


@pytest.fixture(scope="module")
def gdes_run(tmp_path_factory):
    """A real gdes pretraining run in-process: 4 steps, a checkpoint every 2, half-depth
    generator."""
    from bertjax import pretrain

    root = tmp_path_factory.mktemp("gdes")
    data_dir, vocab = ps.prepare(str(root / "data"), nsp=False, dupe_factor=1)
    args = ps.overrides(data_dir, vocab, **ps.ELECTRA, **{
        "train.num_steps": 4, "train.checkpoint_every": 2, "train.keep_checkpoints": 3,
        "objective.embedding_sharing": "gdes", "objective.generator_num_layers": 1,
        "train.async_checkpointing": False})
    cfg = ps.apply(_electra_recipe(), args)
    run = str(root / "run")
    pretrain.pretrain(cfg, run)
    return run, cfg, args


def _electra_recipe():
    import importlib.util

    spec = importlib.util.spec_from_file_location("electra_recipe",
                                                  os.path.join(ps.ROOT, "configs", "electra.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config("tiny")


def test_gdes_resumes_exactly(gdes_run, tmp_path):
    import shutil

    from bertjax import pretrain

    run, cfg, args = gdes_run
    ref_losses, ref = ps.losses(run), interop.flat_params(model_files.load_model(run)[0])
    assert sorted(ref_losses) == [1, 2, 3, 4]
    assert any(k[-1] == "residual" for k in ref)
    # The residual trained (the RTD loss reached it) and the generator is one layer deep.
    assert np.abs(ref[("bert", "embeddings", "word_embeddings", "residual")]).max() > 0
    assert not any(k[:3] == ("generator", "encoder", "layers") and k[3] == 1 for k in ref)
    again = str(tmp_path / "again")
    shutil.copytree(run, again)
    shutil.rmtree(os.path.join(again, "checkpoints", "4"))
    os.remove(os.path.join(again, "COMPLETED"))
    pretrain.pretrain(ps.apply(_electra_recipe(), args), again)
    resumed = ps.losses(again)
    for step in (3, 4):
        assert resumed[step] == ref_losses[step], step
    back = interop.flat_params(model_files.load_model(again)[0])
    assert sorted(back) == sorted(ref)
    assert all(np.array_equal(back[k], ref[k]) for k in ref)


def test_a_gdes_run_exports_through_the_cli_path_at_hf_parity(gdes_run, tmp_path):
    from bertjax.tools import export

    run = gdes_run[0]
    model, cfg, task, _, _ = model_files.load_model(run)
    assert task == "electra_pretraining"
    out = str(tmp_path / "hf")
    export.export(run, "hf", out)
    word = model.bert.embeddings.word_embeddings
    _check_pair_parity(model, out, word.embedding[...] + word.residual[...], word.embedding[...],
                       gen_layers=1)
    # A params-only checkpoint of the pair records how it is tied and reads back as built...
    ckpt = str(tmp_path / "ckpt")
    model_files.save_checkpoint(ckpt, model, cfg, task)
    a, b = interop.flat_params(model), interop.flat_params(model_files.load_model(ckpt)[0])
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    # ...and fine-tuning (init_from) starts from the discriminator's effective token table.
    for src in (run, ckpt):
        init = model_files.gdes_discriminator(src, str(tmp_path / "init"))
        disc, _, disc_task, _, _ = model_files.load_model(init)
        assert disc_task == "replaced_token_detection"
        np.testing.assert_array_equal(np.asarray(disc.bert.embeddings.word_embeddings.embedding[...]),
                                      np.asarray(word.embedding[...] + word.residual[...]))


def test_gdes_pretrains_a_deberta_v2_pair_with_v3s_half_depth_generator():
    """DeBERTa-v3's recipe at toy size: arch deberta-v2 (no absolute positions, c2p+p2c over log
    buckets), a generator of the same width at half the depth, gdes sharing; three plain SGD
    steps on the objective's loss lower it and move the residual. (Which loss reaches which half
    of the token table does not depend on the arch: the gradient test above.)"""
    import dataclasses

    from bertjax.model.archs import ARCHS

    knobs = {**ARCHS["deberta-v2"], "arch": "deberta-v2", "position_buckets": 8,
             "max_relative_positions": 16, "embedding_size": 0, "generator_hidden_size": 48,
             "generator_num_heads": 3, "generator_intermediate_size": 37, "hidden_dropout": 0.0,
             "attention_dropout": 0.0}
    cfg = dataclasses.replace(_tiny_cfg(), **knobs)
    obj = _objective(embedding_sharing="gdes", generator_num_layers=1)
    model = obj.build("electra_pretraining", cfg, seed=1)
    assert model.generator.config.num_layers == 1 and model.generator.config.hidden_size == 48
    _, batch = _batch(4, 32, seed=6)

    @nnx.jit
    def step(m):
        def f(m):
            return obj.loss(obj.forward(m, batch, jax.random.key(2)), batch)[0]
        loss, g = nnx.value_and_grad(f)(m)
        state = nnx.state(m, nnx.Param)
        nnx.update(m, jax.tree.map(lambda p, d: p - 0.01 * d, state, nnx.state(g, nnx.Param)))
        return loss

    losses = [float(step(model)) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert float(jnp.abs(model.bert.embeddings.word_embeddings.residual[...]).max()) > 0
