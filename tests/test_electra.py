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
from bertjax.model import BertConfig, build_model
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
    root = tmp_path_factory.mktemp("electra")
    data_dir, vocab = ps.prepare(str(root / "data"), nsp=False)
    args = ps.overrides(data_dir, vocab, **ps.ELECTRA, **{"train.num_steps": 6,
                                                          "train.checkpoint_every": 3})
    run = str(root / "run")
    r = ps.run_pretrain(run, args, config="configs/electra.py:tiny")
    assert r.returncode == 0, r.stderr[-3000:]
    return run, data_dir, vocab, args


def test_a_run_logs_every_electra_metric(electra_run):
    run = electra_run[0]
    rows = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
    keys = set().union(*(r.keys() for r in rows))
    for m in ("mlm_accuracy", "disc_accuracy", "disc_precision", "disc_recall",
              "replaced_fraction", "sampled_accuracy"):
        assert f"train/{m}" in keys, keys
    plan = json.load(open(os.path.join(run, "run_plan.json")))
    assert plan["task_model"] == "electra_pretraining"


def test_export_is_two_hf_directories_that_transformers_runs_to_our_logits(electra_run, tmp_path):
    run = electra_run[0]
    out = str(tmp_path / "hf")
    r = run_cli("export", f"--checkpoint={run}", "--format=hf", f"--out={out}")
    assert r.returncode == 0, r.stderr[-2000:]
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
    r = ps.run_pretrain(str(tmp_path / "continued"), args + [f"--config.init_from={ckpt}"],
                        config="configs/electra.py:tiny")
    assert r.returncode == 0 and "init_from" in r.stdout + r.stderr, r.stderr[-2000:]
    for part, want_task in (("discriminator", "replaced_token_detection"),
                            ("generator", "masked_lm")):
        _, _, got, report, _ = model_files.load_model(os.path.join(out, part))
        assert got == want_task and not report["missing"] and not report["unexpected"]


def test_a_pair_whose_embeddings_differ_is_refused(electra_run, tmp_path):
    from safetensors.numpy import load_file, save_file

    out = str(tmp_path / "hf")
    assert run_cli("export", f"--checkpoint={electra_run[0]}", "--format=hf",
                f"--out={out}").returncode == 0
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
