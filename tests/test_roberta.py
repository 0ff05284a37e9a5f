"""RoBERTa end to end: a Hugging Face directory written by transformers' own save_pretrained
(model and tokenizer, so it holds tokenizer.json only) converts, exports back with tokenizer files
AutoTokenizer loads, and fine-tunes on every task family (as does a DeBERTa-v2 directory with
an spm.model, with layer-wise learning-rate decay); and pretraining on BPE-prepared
FULL-SENTENCES data with configs/roberta.py exports a RobertaForMaskedLM that transformers runs
to the same logits. Pad id 1 as in GPT-2's BPE here; the parity tests use another."""
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from finetune_support import compile_cache, recipe, tiny  # noqa: F401  (autouse fixture)
from tokenizers import AddedToken, ByteLevelBPETokenizer

import deberta_support
import pretrain_support as ps
import toy_tasks as toy
from bertjax.finetuning import run as ft_run
from bertjax.interop import params as interop
from bertjax.load import model_files
from bertjax.text import load_tokenizer
from bertjax.tools import export as export_lib

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _texts(seed=0, n=400):
    """Sentences in the toy tasks' words, for a byte-level BPE that covers their data."""
    rng = random.Random(seed)
    words = toy.TOY_WORDS + [w.capitalize() for w in toy.NAMES + toy.CITIES + toy.ORGS]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + rng.choice(".?!")
            for _ in range(n)]


def _bpe_files(directory):
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_texts(), vocab_size=500, min_frequency=1, show_progress=False,
                            special_tokens=SPECIALS)
    os.makedirs(directory, exist_ok=True)
    bpe.save_model(directory)
    return os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")


@pytest.fixture(scope="module")
def roberta_hf(tmp_path_factory):
    """RobertaForMaskedLM with random, perturbed weights and odd sizes, saved with its tokenizer
    by transformers (tokenizer.json + tokenizer_config.json)."""
    root = tmp_path_factory.mktemp("roberta")
    vocab, merges = _bpe_files(str(root / "bpe"))
    tok = transformers.RobertaTokenizerFast(
        vocab=vocab, merges=merges,
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True))
    torch.manual_seed(0)
    config = transformers.RobertaConfig(
        vocab_size=len(tok), hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=37, max_position_embeddings=64 + 2, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2)
    model = transformers.RobertaForMaskedLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = root / "hf"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    assert not {"vocab.json", "merges.txt", "vocab.txt"} & set(os.listdir(path))
    return str(path), model


def _hf_logits(model, tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return enc, model(**enc).logits.numpy()


def test_convert_and_export_round_trip_with_tokenizer_json_only(roberta_hf, tmp_path):
    path, hf_model = roberta_hf
    model, cfg, task, report, _ = model_files.load_model(path)
    assert (cfg.arch, task, cfg.pad_token_id, cfg.position_offset) == ("roberta", "masked_lm", 1, 2)
    assert not report["missing"] and not report["unexpected"]
    ckpt = str(tmp_path / "ckpt")
    model_files.save_checkpoint(ckpt, model, cfg, task, extra_files=model_files.tokenizer_extras(path))
    out = str(tmp_path / "export")
    export_lib.export(ckpt, "hf", out)

    texts = ["Anna lives in Paris.", "the big dog sees a red bird near the tree!", "Kofi works"]
    auto_in = transformers.AutoTokenizer.from_pretrained(path)
    auto_out = transformers.AutoTokenizer.from_pretrained(out)
    assert auto_out.model_max_length == 64  # positions, not the 66 rows of the table
    ours = load_tokenizer(out)
    for a, b in [(t, None) for t in texts] + [(texts[0], texts[1])]:
        want = auto_in(a, b)["input_ids"]
        assert auto_out(a, b)["input_ids"] == want
        ids_b = ours.encode(b) if b is not None else None
        assert ours.build_inputs(ours.encode(a), ids_b)[0] == want
    back, info = transformers.RobertaForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    enc, want = _hf_logits(hf_model, auto_in, texts)
    _, got = _hf_logits(back.eval(), auto_out, texts)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # And ours on the same ids, every position (the MLM head gathers the positions it is given).
    ids, mask = enc["input_ids"].numpy(), enc["attention_mask"].numpy()
    positions = np.tile(np.arange(ids.shape[1]), (len(texts), 1)).astype(np.int32)
    mine = model(ids, np.zeros_like(ids), mask, positions)["mlm_logits"]
    real = mask.astype(bool)
    assert np.abs(np.asarray(mine)[real] - want[real]).max() < 1e-4


@pytest.fixture(scope="module")
def deberta_hf(tmp_path_factory):
    """DebertaV2ForMaskedLM (v3's knobs, 16 log buckets) saved by transformers with an
    spm.model (tests/deberta_support.py)."""
    return deberta_support.deberta_dir(str(tmp_path_factory.mktemp("deberta")))


# member -> (fixture, what the run plan must show, optim.layer_decay): DeBERTa fine-tunes with
# ELECTRA's layer-wise decay, its shared relative table included.
MEMBERS = {
    "roberta": ("roberta_hf", {"arch": "roberta", "position_offset": 2}, 1.0),
    "deberta-v2": ("deberta_hf", {"arch": "deberta-v2", "relative_attention": True,
                                  "position_biased_input": False}, 0.8),
}


def _finetune(cfg, workdir, member="roberta"):
    _, want, layer_decay = MEMBERS[member]
    cfg.optim.layer_decay = layer_decay
    summary = ft_run.finetune(cfg, workdir)
    run = summary["runs"][0]
    plan = json.loads(open(os.path.join(workdir, "seed-0", "run_plan.json")).read())
    assert {k: plan["model"][k] for k in want} == want
    saved = json.loads(open(os.path.join(workdir, "seed-0", "config.json")).read())
    assert saved["optim"]["layer_decay"] == layer_decay
    return run["dev"]


@pytest.mark.slow
@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_every_fine_tuning_task_runs_from_a_roberta_directory(member, request, tmp_path):
    path = request.getfixturevalue(MEMBERS[member][0])[0]
    glue_dir = str(tmp_path / "glue")
    toy.make_toy_glue_dir(glue_dir, "mnli", n_train=64, n_dev=32, n_test=4)
    cfg = tiny(recipe("glue", "mnli"), path, epochs=8)
    cfg.task.data_dir = glue_dir
    dev = _finetune(cfg, str(tmp_path / "mnli"), member)
    # Pairs as <s> A </s></s> B </s>: the toy label's signal word is found (chance is 1/3).
    assert dev["matched/accuracy"] > 0.5, dev

    toy.make_toy_squad(str(tmp_path / "train.json"), "1.1", n_paragraphs=6, seed=1)
    toy.make_toy_squad(str(tmp_path / "dev.json"), "1.1", n_paragraphs=3, seed=2)
    cfg = tiny(recipe("squad", "v1"), path, seq=64, epochs=2)
    cfg.task.data_dir, cfg.task.train_file, cfg.task.predict_file = str(tmp_path), "train.json", "dev.json"
    cfg.task.doc_stride, cfg.task.max_query_length = 24, 16
    dev = _finetune(cfg, str(tmp_path / "squad"), member)
    assert np.isfinite(dev["f1"]) and np.isfinite(dev["exact"])

    ner_dir = tmp_path / "ner"
    toy.make_toy_conll(str(ner_dir), n_train=48, n_dev=16, n_test=8)
    cfg = tiny(recipe("ner"), path, epochs=2)
    cfg.task.data_dir = str(ner_dir)
    dev = _finetune(cfg, str(tmp_path / "ner_work"), member)
    assert np.isfinite(dev["f1"])


@pytest.mark.slow
def test_roberta_pretraining_on_bpe_full_sentences_exports_to_transformers(tmp_path):
    corpus = str(tmp_path / "corpus.txt")
    ps.write_corpus(corpus)
    bpe_dir = tmp_path / "bpe"
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")

    def bertjax(*args):
        proc = subprocess.run([sys.executable, "-m", "bertjax", *args], cwd=ps.ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    bertjax("train-vocab", f"--input={corpus}", "--format=text", "--kind=bpe",
            "--vocab_size=300", f"--out={bpe_dir}")
    data = str(tmp_path / "data")
    bertjax("prepare", f"--input={corpus}", f"--vocab={bpe_dir}", f"--output_dir={data}",
            "--max_seq_length=32", "--max_predictions_per_seq=5", "--no_nsp", "--masking=dynamic",
            "--dupe_factor=1", "--num_workers=1")
    meta = json.loads(open(os.path.join(data, "metadata.json")).read())
    pad = meta["special_ids"]["pad"]
    work = str(tmp_path / "work")
    bertjax("pretrain", "--config=configs/roberta.py:tiny", f"--workdir={work}",
            f"--config.data.train_dir={data}", "--config.data.max_seq_length=32",
            "--config.data.max_predictions_per_seq=5",
            f"--config.model.vocab_size={meta['tokenizer']['vocab_size']}",
            "--config.train.num_steps=4", "--config.optim.warmup_steps=1",
            "--config.train.batch_size=16", "--config.train.plot=false",
            "--config.model.hidden_size=48", "--config.model.num_heads=3",
            "--config.model.intermediate_size=37", "--config.model.num_layers=2")
    plan = json.loads(open(os.path.join(work, "run_plan.json")).read())
    # Positions follow the data's pad id, keeping the recipe's usable positions.
    assert plan["task_model"] == "masked_lm" and plan["model"]["pad_token_id"] == pad
    assert plan["model"]["position_offset"] == pad + 1
    assert plan["model"]["max_position_embeddings"] == 514 - 2 + pad + 1
    out = str(tmp_path / "hf")
    export_lib.export(work, "hf", out)
    model, cfg, _, _, _ = model_files.load_model(work)
    hf, info = transformers.RobertaForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    auto = transformers.AutoTokenizer.from_pretrained(out)
    texts = ["The cat sat on the mat.", "Big red boat on the lake."]
    enc, want = _hf_logits(hf.eval(), auto, texts)
    ids, mask = enc["input_ids"].numpy(), enc["attention_mask"].numpy()
    assert ids[0, 0] == load_tokenizer(out).cls_id
    positions = np.tile(np.arange(ids.shape[1]), (2, 1)).astype(np.int32)
    mine = np.asarray(model(ids, np.zeros_like(ids), mask, positions)["mlm_logits"])
    real = mask.astype(bool)
    assert np.abs(mine[real] - want[real]).max() < 1e-4
    assert interop.flat_params(model)  # a complete model was restored
