"""bertjax.tools.embed and bertjax.tools.fill_mask on a checkpoint converted from a Hugging Face directory agree
with transformers: [CLS] and mean embeddings equal HF's last hidden states, and the fill-mask
candidates are HF's top tokens with HF's probabilities."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hf_support import save_hf

import torch  # noqa: E402  (pinned in requirements-dev.txt: imported plainly, never skipped)
import transformers  # noqa: E402

from bertjax.load import model_files  # noqa: E402
from bertjax.tools import embed as embed_lib  # noqa: E402
from bertjax.tools import fill_mask as fill_lib  # noqa: E402
from bertjax.errors import UserError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
TEXTS = ["The cat sat on the mat.", "a dog ran !", "",
         "Café houses, the cats sat on a mat and the dog ran w7 w8 w9 w10 w11"]
PROMPTS = ["the cat [MASK] on the mat .", "[MASK] dog ran [MASK] w3 !"]


@pytest.fixture(scope="module")
def run_module(tmp_path_factory):
    """Runs `python -m MODULE ARGS`. The subprocesses share a persistent JAX compilation cache:
    they build the same tiny model, and compiling its initialisers again would take most of each
    run's time on a busy 2-core machine."""
    cache = str(tmp_path_factory.mktemp("jax-cache"))
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

    def run(module, *args):
        return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, env=env)

    return run


@pytest.fixture(scope="module")
def hf(tmp_path_factory, run_module):
    """A random BertForPreTraining saved with its vocabulary, and its bertjax conversion made by
    `python -m bertjax.tools.convert`; plus a BertForMaskedLM and a token classifier sharing its weights."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=37,
                                  max_position_embeddings=64, num_labels=3)
    model = transformers.BertForPreTraining(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_hf(model, root / "pretraining")
    r = run_module("bertjax.tools.convert", f"--from_hf={root / 'pretraining'}", f"--out={root / 'ckpt'}")
    assert r.returncode == 0, r.stderr
    state = model.state_dict()
    others = {}
    for name, cls in (("masked_lm", transformers.BertForMaskedLM),
                      ("token_classification", transformers.BertForTokenClassification)):
        other = cls(cfg).eval()
        # Unused names (pooler, NSP) are dropped; the encoder and MLM head are shared.
        other.load_state_dict({k: v for k, v in state.items() if k in other.state_dict()},
                              strict=False)
        others[name] = (other, save_hf(other, root / name))
    return dict(model=model, dir=str(root / "pretraining"), ckpt=str(root / "ckpt"), others=others,
                tokenizer=transformers.BertTokenizerFast.from_pretrained(str(root / "pretraining")))


def hf_embeddings(hf, texts):
    enc = hf["tokenizer"](texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        seq = hf["model"].bert(**enc).last_hidden_state.numpy()
    w = enc["attention_mask"].numpy()[..., None].astype(np.float32)
    last = enc["attention_mask"].numpy().sum(1) - 1
    return {"cls": seq[:, 0], "mean": (seq * w).sum(1) / w.sum(1),
            "last": seq[np.arange(len(seq)), last]}


def write_texts(path, texts):
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("pooling", embed_lib.POOLINGS)
def test_embeddings_equal_transformers(pooling, hf, tmp_path):
    src = write_texts(tmp_path / "in.txt", TEXTS)
    out = tmp_path / "emb.npy"
    # batch_size 3 with four texts: two batches, sorted by length, one padded with an empty row.
    got = embed_lib.embed_file(hf["ckpt"], src, str(out), pooling, batch_size=3)
    saved = np.load(out)
    assert saved.dtype == np.float32 and saved.shape == (len(TEXTS), 32)
    np.testing.assert_array_equal(saved, got)
    diff = np.max(np.abs(saved - hf_embeddings(hf, TEXTS)[pooling]))
    assert diff < TOL, f"{pooling}: max abs diff {diff}"
    assert sorted(os.listdir(tmp_path)) == ["emb.npy", "in.txt"]


def test_embed_reads_hf_dirs_of_any_head(hf, tmp_path):
    """The same encoder gives the same embeddings whether read from the converted checkpoint, the
    HF pretraining directory, a BertForMaskedLM or a token classifier."""
    src = write_texts(tmp_path / "in.txt", TEXTS[:2])
    ref = embed_lib.embed_file(hf["ckpt"], src, str(tmp_path / "ref.npy"), "mean")
    for path in (hf["dir"], *(p for _, p in hf["others"].values())):
        got = embed_lib.embed_file(path, src, str(tmp_path / "got.npy"), "mean")
        np.testing.assert_allclose(got, ref, atol=1e-6, err_msg=path)


def test_embed_cuts_long_texts_and_checks_lengths(hf, tmp_path):
    model, cfg, task = model_files.load_checkpoint(hf["ckpt"], needs=("bert/encoder",))
    tok = model_files.checkpoint_tokenizer(hf["ckpt"], cfg.vocab_size)
    enc = embed_lib.encoder_of(model, task)
    long = " ".join(["cat"] * 20)
    cut = embed_lib.embed_texts(enc, tok, [long], "cls", max_seq_length=8)
    same = embed_lib.embed_texts(enc, tok, [" ".join(["cat"] * 6)], "cls", max_seq_length=64)
    np.testing.assert_allclose(cut, same, atol=1e-6)
    with pytest.raises(UserError, match="max_seq_length"):
        embed_lib.embed_texts(enc, tok, [long], "cls", max_seq_length=65)


def test_input_file_problems_are_one_clear_error(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nca\xfe\n")
    with pytest.raises(UserError, match=r"bad.txt line 2 is not valid UTF-8 \(byte 0xfe"):
        embed_lib.read_texts(str(bad))
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        embed_lib.read_texts(str(tmp_path / "empty.txt"))
    with pytest.raises(UserError, match="does not exist"):
        embed_lib.read_texts(str(tmp_path / "nope.txt"))
    (tmp_path / "dos.txt").write_bytes("\ufeffone\r\n\r\ntwo\r\n".encode())
    assert embed_lib.read_texts(str(tmp_path / "dos.txt")) == ["one", "", "two"]


def hf_top(model, tokenizer, text, k):
    """[(ids, probs)] per [MASK] from transformers' MLM logits."""
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
    logits = out.prediction_logits if hasattr(out, "prediction_logits") else out.logits
    where = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten()
    probs = torch.softmax(logits[0, where], dim=-1)
    top = torch.topk(probs, k)
    return [(i.tolist(), p.numpy()) for i, p in zip(top.indices, top.values)]


def check_against_hf(results, model, tokenizer, k):
    assert len(results) == len(PROMPTS)
    for text, entries in zip(PROMPTS, results):
        ref = hf_top(model, tokenizer, text, k)
        assert len(entries) == len(ref) == text.count("[MASK]")
        for e, (ids, probs) in zip(entries, ref):
            assert [c["id"] for c in e["candidates"]] == ids, text
            np.testing.assert_allclose([c["prob"] for c in e["candidates"]], probs, atol=1e-5)
            assert e["candidates"][0]["token"] == tokenizer.convert_ids_to_tokens(ids[0])


def test_fill_mask_equals_transformers(hf):
    model, _, tok = fill_lib.load_mlm_model(hf["ckpt"])
    results = fill_lib.fill_mask(model, tok, PROMPTS, top_k=5)
    check_against_hf(results, hf["model"], hf["tokenizer"], 5)
    assert results[0][0]["position"] == 3  # [CLS] the cat [MASK]
    table = fill_lib.format_text(PROMPTS, results).splitlines()
    assert table[0] == PROMPTS[0] and table[1].startswith("  [MASK] 1 (token 3): ")
    assert results[0][0]["candidates"][0]["token"] in table[1]
    # A BertForMaskedLM directory (no NSP, no pooler) serves as well.
    mlm, mlm_dir = hf["others"]["masked_lm"]
    model, _, tok = fill_lib.load_mlm_model(mlm_dir)
    check_against_hf(fill_lib.fill_mask(model, tok, PROMPTS, top_k=3), mlm, hf["tokenizer"], 3)


def test_fill_mask_refusals(hf):
    model, _, tok = fill_lib.load_mlm_model(hf["ckpt"])
    with pytest.raises(UserError, match=r"text 2 has no \[MASK\]"):
        fill_lib.fill_mask(model, tok, ["the [MASK] sat", "no mask here"])
    with pytest.raises(UserError, match="top_k"):
        fill_lib.fill_mask(model, tok, ["the [MASK] sat"], top_k=0)
    with pytest.raises(UserError, match="at most 64"):
        fill_lib.fill_mask(model, tok, ["[MASK] " + "cat " * 70])
    with pytest.raises(UserError, match="token_classification model, which has no masked-LM head"):
        fill_lib.load_mlm_model(hf["others"]["token_classification"][1])


def test_command_lines(hf, tmp_path, run_module):
    src = write_texts(tmp_path / "in.txt", TEXTS)
    r = run_module("bertjax.tools.embed", f"--checkpoint={hf['ckpt']}", f"--input={src}",
                   "--pooling=mean", f"--output={tmp_path / 'emb.npy'}")
    assert r.returncode == 0, r.stderr
    assert f"wrote {len(TEXTS)} x 32" in r.stdout
    diff = np.max(np.abs(np.load(tmp_path / "emb.npy") - hf_embeddings(hf, TEXTS)["mean"]))
    assert diff < TOL

    r = run_module("bertjax.tools.fill_mask", f"--checkpoint={hf['ckpt']}", "--top_k=4", "--json",
                   *PROMPTS)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [row["text"] for row in rows] == PROMPTS
    check_against_hf([row["masks"] for row in rows], hf["model"], hf["tokenizer"], 4)
