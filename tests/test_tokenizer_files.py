"""Tokenizer directories as transformers 5 writes them (tokenizer.json + tokenizer_config.json
only), RoBERTa's byte-level BPE, the input layout on the tokenizer, export to tokenizer.json, BPE
vocabularies in train-vocab and prepare, and the one-line refusals of bad or mismatched ones.

Every tokenizer is trained here on real English text (gensim's Lee corpus); AutoTokenizer is the
reference for ids."""
import json
import os
import re
import shutil
import subprocess
import sys

import gensim
import numpy as np
import pretrain_support as ps
import pytest
import transformers
from tokenizers import AddedToken, ByteLevelBPETokenizer as HFByteLevelBPE
from transformers import AutoTokenizer

from bertjax.data import masking, prepare, records
from bertjax.errors import UserError
from bertjax.store import workdir as wd
from bertjax.text import load_tokenizer, resolve_tokenizer_file
from bertjax.text.base import Tokenizer
from bertjax.text.bpe import ByteLevelBPETokenizer
from bertjax.text.train_vocab import train_vocab
from bertjax.text.unigram import UnigramTokenizer
from bertjax.text.wordpiece import WordPieceTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data", "lee_background.cor")
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def _sentences() -> list[str]:
    with open(CORPUS, encoding="utf-8") as f:
        text = f.read()
    return [s for line in text.splitlines() for s in re.split(r"(?<=[.!?])\s+", line.strip()) if s]


SENTENCES = _sentences()[:300]
PAIRS = list(zip(SENTENCES[:150], SENTENCES[150:]))
# Text that is not plain prose: specials typed in it, accents, CJK, emoji, odd spacing.
EXTRA = ["The <mask> sat on the mat.<mask>x", "Café naïve résumé ZÜRICH façade 北京 🤖 don't",
         "  two  spaces\tand a tab ", "Ġalready-mapped Ċ chars", ""]


def _bertjax(*args, cwd=REPO):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, "-m", "bertjax", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _one_error_line(proc, timeout=300) -> str:
    _, stderr = proc.communicate(timeout=timeout)
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, (proc.returncode, stderr[-3000:])
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def assert_same_ids(ours: Tokenizer, auto, texts=SENTENCES, pairs=PAIRS, types=True):
    """ids (and segment ids) of build_inputs equal AutoTokenizer's, single texts and pairs."""
    for text in texts:
        ref = auto(text)
        ids, seg = ours.build_inputs(ours.encode(text))
        assert ids == ref["input_ids"], text
        if types and "token_type_ids" in ref:
            assert seg == ref["token_type_ids"], text
    for a, b in pairs:
        ref = auto(a, b)
        ids, seg = ours.build_inputs(ours.encode(a), ours.encode(b))
        assert ids == ref["input_ids"], (a, b)
        if types and "token_type_ids" in ref:
            assert seg == ref["token_type_ids"], (a, b)


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    """A RoBERTa tokenizer directory as transformers 5 saves it (tokenizer.json and
    tokenizer_config.json only), and the same vocabulary as vocab.json + merges.txt."""
    root = tmp_path_factory.mktemp("roberta")
    trained = HFByteLevelBPE()
    trained.train(CORPUS, vocab_size=2000, min_frequency=2, show_progress=False,
                  special_tokens=[*ROBERTA_SPECIALS, "<mask>"])
    files = root / "files"
    files.mkdir()
    trained.save_model(str(files))
    hf = root / "hf"
    # transformers' RobertaTokenizer builds RoBERTa's pipeline from the files; <mask> strips the
    # space before it, as in roberta-base's tokenizer.json.
    transformers.RobertaTokenizerFast(
        vocab=str(files / "vocab.json"), merges=str(files / "merges.txt"),
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True),
    ).save_pretrained(str(hf))
    assert sorted(os.listdir(hf)) == ["tokenizer.json", "tokenizer_config.json"]
    return {"hf": str(hf), "files": str(files), "auto": AutoTokenizer.from_pretrained(str(hf))}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """{lower_case: (vocab.txt dir, transformers 5 BertTokenizer dir)}."""
    out = {}
    for lower_case in (True, False):
        root = tmp_path_factory.mktemp(f"bert{int(lower_case)}")
        train_vocab(CORPUS, "wordpiece", 1200, str(root / "txt"), lower_case=lower_case,
                    fmt="text")
        hf = root / "hf"
        transformers.BertTokenizerFast(vocab=str(root / "txt" / "vocab.txt"),
                                       do_lower_case=lower_case).save_pretrained(str(hf))
        assert sorted(os.listdir(hf)) == ["tokenizer.json", "tokenizer_config.json"]
        out[lower_case] = (str(root / "txt"), str(hf))
    return out


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    train_vocab(CORPUS, "sentencepiece", 1000, str(d), lower_case=True, fmt="text")
    return str(d)


@pytest.fixture(scope="module")
def albert(spm, tmp_path_factory):
    """bertjax's SentencePiece model as transformers 5 saves it for ALBERT: a Unigram
    tokenizer.json (ALBERT's text rules: lower-cased, accents stripped)."""
    d = tmp_path_factory.mktemp("albert")
    transformers.AlbertTokenizerFast.from_pretrained(
        spm, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(str(d))
    assert sorted(os.listdir(d)) == ["tokenizer.json", "tokenizer_config.json"]
    return str(d)


@pytest.fixture(scope="module")
def trained_bpe(tmp_path_factory):
    """`bertjax train-vocab --kind=bpe`, twice in fresh processes."""
    root = tmp_path_factory.mktemp("trained_bpe")
    procs = [_bertjax("train-vocab", f"--input={CORPUS}", "--format=text", "--kind=bpe",
                      "--vocab_size=1500", f"--out={root / name}",
                      *(["--exact"] if name == "b" else []))
             for name in ("a", "b")]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert "trained a bpe vocabulary of 1500 tokens" in out
    return str(root / "a"), str(root / "b")


# ------------------------------------------------------------------------ byte-level BPE


def test_roberta_tokenizer_json_equals_auto_tokenizer(roberta):
    auto = roberta["auto"]
    assert type(auto).__name__ == "RobertaTokenizer"
    assert resolve_tokenizer_file(roberta["hf"])[0] == "tokenizer.json"
    assert resolve_tokenizer_file(roberta["files"])[0] == "bpe"
    from_json, from_files = load_tokenizer(roberta["hf"]), load_tokenizer(roberta["files"])
    for tok in (from_json, from_files):
        assert isinstance(tok, ByteLevelBPETokenizer) and isinstance(tok, Tokenizer)
        assert [tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id, tok.mask_id] == [0, 1, 2, 3, 4]
        assert_same_ids(tok, auto, SENTENCES + EXTRA)
    # Pairs really are RoBERTa's: <s> A </s></s> B </s>, all segment ids 0.
    a, b = from_json.encode("Hello world."), from_json.encode("Bye.")
    assert from_json.build_inputs(a, b) == ([0, *a, 2, 2, *b, 2], [0] * (len(a) + len(b) + 4))
    assert from_json.build_inputs(a) == ([0, *a, 2], [0] * (len(a) + 2))
    assert (from_json.num_special(False), from_json.num_special(True)) == (2, 4)
    # <mask> swallows the space before it, as in RoBERTa.
    assert from_json.encode("the <mask>") == auto("the <mask>", add_special_tokens=False)["input_ids"]
    assert from_json.encode("the <mask>")[-1] == from_json.mask_id
    # One vocabulary, one identity, whichever spelling.
    ident = from_json.identity()
    assert ident == from_files.identity()
    assert ident["kind"] == "bpe" and ident["vocab_size"] == 2000 and ident["lower_case"] is False


def test_bpe_continuations_follow_the_word_start_mark(roberta):
    tok = load_tokenizer(roberta["hf"])
    pieces = tok.convert_ids_to_tokens(range(tok.vocab_size))
    for i, piece in enumerate(pieces):
        special = i in (tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id, tok.mask_id)
        assert tok.is_continuation(i) == (not special and not piece.startswith("\u0120")), piece
    ids = tok.encode(" Firefighters battled bushfires")
    words = [not tok.is_continuation(i) for i in ids]
    assert sum(words) == 3 and len(ids) > 3  # three words, some in several pieces
    # RoBERTa adds no space before a text, so its first piece has no "Ġ" and counts as a
    # continuation; whole-word masking starts a word there anyway, after <s> (see masking.py).
    first = tok.encode("Firefighters battled bushfires")
    assert tok.is_continuation(first[0]) and sum(not tok.is_continuation(i) for i in first) == 2
    assert tok.continuation_mask.shape == (tok.vocab_size,)


def test_train_vocab_bpe_loads_in_auto_tokenizer(trained_bpe, tmp_path):
    a, b = trained_bpe
    assert sorted(os.listdir(a)) == ["merges.txt", "tokenizer.json", "tokenizer_config.json",
                                     "vocab.json"]
    # Fresh processes (different hash seeds), with and without --exact: the same bytes.
    for name in os.listdir(a):
        assert open(os.path.join(a, name), "rb").read() == open(os.path.join(b, name), "rb").read()
    vocab = json.load(open(os.path.join(a, "vocab.json"), encoding="utf-8"))
    order = sorted(vocab, key=vocab.get)
    assert order[:4] == ROBERTA_SPECIALS and order[-1] == "<mask>" and len(order) == 1500
    assert open(os.path.join(a, "merges.txt"), encoding="utf-8").readline() == "#version: 0.2\n"
    ours = load_tokenizer(a)
    assert isinstance(ours, ByteLevelBPETokenizer)
    auto = AutoTokenizer.from_pretrained(a)
    assert type(auto).__name__ == "RobertaTokenizer"
    assert_same_ids(ours, auto, SENTENCES + EXTRA)
    # transformers reads vocab.json + merges.txt alone (no tokenizer.json) the same way.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(a, name), legacy / name)
    assert_same_ids(ours, AutoTokenizer.from_pretrained(str(legacy)), SENTENCES[:50] + EXTRA, [])
    assert load_tokenizer(str(legacy)).identity() == ours.identity()


def test_train_vocab_bpe_refuses_lower_case(tmp_path):
    with pytest.raises(UserError, match="cased"):
        train_vocab(CORPUS, "bpe", 1000, str(tmp_path / "v"), lower_case=True, fmt="text")
    assert not (tmp_path / "v").exists()


# ------------------------------------------------------------------------ WordPiece, Unigram


@pytest.mark.parametrize("lower_case", [True, False], ids=["uncased", "cased"])
def test_bert_tokenizer_json_equals_vocab_txt(bert, lower_case, tmp_path):
    txt_dir, hf_dir = bert[lower_case]
    auto = AutoTokenizer.from_pretrained(hf_dir)
    ours = load_tokenizer(hf_dir)
    assert isinstance(ours, WordPieceTokenizer) and ours.lower_case is lower_case
    assert_same_ids(ours, auto, SENTENCES + EXTRA)
    assert ours.identity() == load_tokenizer(txt_dir).identity()
    # Without tokenizer_config.json the casing comes from the file's BertNormalizer.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(os.path.join(hf_dir, "tokenizer.json"), bare / "tokenizer.json")
    assert load_tokenizer(str(bare)).identity() == ours.identity()
    # Saved again, it is a vocab.txt with the same hash (and a tokenizer.json).
    ours.save(str(tmp_path / "again"))
    again = load_tokenizer(str(tmp_path / "again"))
    assert again.identity() == ours.identity() and again.vocab_path.endswith("vocab.txt")


def test_unigram_tokenizer_json_equals_auto_tokenizer(albert, spm):
    auto = AutoTokenizer.from_pretrained(albert)
    assert type(auto).__name__ == "AlbertTokenizer"
    ours = load_tokenizer(albert)
    assert isinstance(ours, UnigramTokenizer) and isinstance(ours, Tokenizer)
    assert_same_ids(ours, auto, SENTENCES + EXTRA[1:])
    sp = load_tokenizer(spm)
    assert [ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id] == [
        sp.pad_id, sp.unk_id, sp.cls_id, sp.sep_id, sp.mask_id]
    ident = ours.identity()
    assert ident["kind"] == "unigram" and ident["lower_case"] is True
    assert ident["strip_accents"] is True  # ALBERT strips accents unless keep_accents
    assert ours.encode("Café") == ours.encode("cafe")
    for i, piece in enumerate(ours.convert_ids_to_tokens(range(ours.vocab_size))):
        if i > 4:
            assert ours.is_continuation(i) == (not piece.startswith("\u2581")), piece
    assert not any(ours.is_continuation(i) for i in range(5))


# ------------------------------------------------------------------------------- export


def test_save_round_trips_through_auto_tokenizer(bert, spm, albert, roberta, tmp_path):
    cases = {"wordpiece-uncased": load_tokenizer(bert[True][0]),
             "wordpiece-cased": load_tokenizer(bert[False][0]),
             "sentencepiece": load_tokenizer(spm),
             "bpe": load_tokenizer(roberta["files"]),
             "unigram": load_tokenizer(albert)}
    legacy = {"wordpiece-uncased": ["vocab.txt"], "wordpiece-cased": ["vocab.txt"],
              "sentencepiece": ["spiece.model"], "bpe": ["merges.txt", "vocab.json"],
              "unigram": []}
    classes = {"wordpiece-uncased": "BertTokenizer", "wordpiece-cased": "BertTokenizer",
               "sentencepiece": "TokenizersBackend", "bpe": "RobertaTokenizer",
               "unigram": "TokenizersBackend"}
    for name, tok in cases.items():
        out = tmp_path / name
        written = tok.save(str(out))
        assert sorted(os.path.basename(p) for p in written) == sorted(
            legacy[name] + ["tokenizer.json", "tokenizer_config.json"]), name
        auto = AutoTokenizer.from_pretrained(str(out))
        assert type(auto).__name__ == classes[name], name
        assert_same_ids(tok, auto, SENTENCES[:150], PAIRS[:50])
        assert load_tokenizer(str(out)).identity() == tok.identity(), name
        config = tok.hf_tokenizer_config()
        if name.startswith("wordpiece"):
            assert config["do_lower_case"] is (name == "wordpiece-uncased")


def test_export_writes_what_auto_tokenizer_reads(roberta, tmp_path):
    from bertjax.tools import export as export_lib

    tok = load_tokenizer(roberta["hf"])
    paths = export_lib._write_tokenizer(tok, str(tmp_path / "hf"), True, 514)
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["merges.txt", "special_tokens_map.json", "tokenizer.json",
                     "tokenizer_config.json", "tokenizer_identity.json", "vocab.json"]
    config = json.load(open(tmp_path / "hf" / "tokenizer_config.json"))
    assert config["tokenizer_class"] == "RobertaTokenizer" and config["model_max_length"] == 514
    specials = json.load(open(tmp_path / "hf" / "special_tokens_map.json"))
    assert specials["cls_token"] == "<s>" and specials["mask_token"]["lstrip"] is True
    assert_same_ids(tok, AutoTokenizer.from_pretrained(str(tmp_path / "hf")), SENTENCES[:100] + EXTRA,
                    PAIRS[:30])
    # The own formats keep the legacy spelling only.
    own = export_lib._write_tokenizer(tok, str(tmp_path / "own"), False, 514)
    assert sorted(os.path.basename(p) for p in own) == [
        "merges.txt", "tokenizer_config.json", "tokenizer_identity.json", "vocab.json"]


# ------------------------------------------------------------------- layout in the tasks


def test_task_features_use_the_tokenizer_layout(roberta, bert):
    from bertjax.data.tasks import glue, ner

    bpe, auto = load_tokenizer(roberta["hf"]), roberta["auto"]
    examples = [glue.GlueExample(i, a, b, "1") for i, (a, b) in enumerate(PAIRS[:40])]
    feats = glue.featurize(examples, bpe, "mrpc", 48)
    for row, (a, b) in enumerate(PAIRS[:40]):
        ref = auto(a, b, truncation="longest_first", max_length=48)["input_ids"]
        n = int(feats["input_mask"][row].sum())
        assert feats["input_ids"][row, :n].tolist() == ref
        assert not feats["segment_ids"][row].any()
    # S=49 leaves BERT an even budget (46): on an odd one the original BERT rule (kept by
    # truncate_pair) gives the spare token to A, the Rust tokenizers library gives it to B.
    wp = load_tokenizer(bert[True][0])
    wp_auto = AutoTokenizer.from_pretrained(bert[True][1])
    feats = glue.featurize(examples, wp, "mrpc", 49)
    for row, (a, b) in enumerate(PAIRS[:40]):
        ref = wp_auto(a, b, truncation="longest_first", max_length=49)
        n = int(feats["input_mask"][row].sum())
        assert feats["input_ids"][row, :n].tolist() == ref["input_ids"]
        assert feats["segment_ids"][row, :n].tolist() == ref["token_type_ids"]
    sent = ner.NerSentence(["Hundreds", "of", "people"], ["O", "O", "O"], [1, 2, 3])
    f = ner.featurize([sent], bpe, ["O"], 16)
    ids = f.arrays["input_ids"][0]
    n = int(f.arrays["input_mask"][0].sum())
    assert ids[0] == bpe.cls_id and ids[n - 1] == bpe.sep_id
    assert f.word_ids[0, :n].tolist()[0] == -1 and f.word_ids[0, n - 1] == -1
    assert f.arrays["label_weights"][0].sum() == 3


# ---------------------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def prepared(roberta, bert, tmp_path_factory):
    """Pretraining data (S=32, P=5, as pretrain_support's overrides) from one BPE and one
    WordPiece vocabulary."""
    root = tmp_path_factory.mktemp("prepared")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES[:150]) + "\n", encoding="utf-8")
    out = {}
    for name, vocab in (("bpe", roberta["files"]), ("wordpiece", bert[True][0])):
        out[name] = str(root / name)
        prepare.prepare(prepare.Options(
            input=str(corpus), vocab=vocab, output_dir=out[name], max_seq_length=32,
            max_predictions_per_seq=5, masking="dynamic", nsp=False, whole_word_masking=True,
            dupe_factor=1, num_workers=1, seed=0, format="text"))
    return out


def test_prepare_with_a_bpe_vocabulary(prepared, roberta):
    tok = load_tokenizer(roberta["hf"])
    meta = json.load(open(os.path.join(prepared["bpe"], "metadata.json")))
    assert meta["tokenizer"] == tok.identity()
    assert meta["special_ids"] == {"pad": 1, "unk": 3, "cls": 0, "sep": 2, "mask": 4}
    assert load_tokenizer(os.path.join(prepared["bpe"], "vocab")).identity() == tok.identity()
    dtype = records.dtype_from_metadata(meta)
    recs = np.concatenate([records.read_shard(os.path.join(prepared["bpe"], s["file"]), dtype)
                           for s in meta["shards"]])
    tokens, lengths = np.asarray(recs["tokens"]), np.asarray(recs["length"])
    assert len(recs) > 20 and (tokens[:, 0] == tok.cls_id).all()
    assert (tokens[np.arange(len(recs)), lengths - 1] == tok.sep_id).all()
    assert (np.asarray(recs["segment_start"]) == lengths).all()  # one segment, all zero
    # Dynamic whole-word masking as the pipeline builds it from the metadata.
    ids = meta["special_ids"]
    table = np.load(os.path.join(prepared["bpe"], meta["continuation_table"]))
    assert (table == tok.continuation_mask).all()
    spec = masking.MaskSpec(max_predictions=5, rate=0.15, whole_word=True, cls_id=ids["cls"],
                            sep_id=ids["sep"], mask_id=ids["mask"],
                            replacement_ids=masking.replacement_ids(meta["vocab_size"],
                                                                    ids.values()),
                            is_continuation=table, budget=meta["mask_budget"])
    out = masking.mask_batch_np(tokens, lengths, np.arange(len(recs)), 0, 7, spec)
    masked_rows = 0
    for row in range(len(recs)):
        chosen = set(out["masked_lm_positions"][row][out["masked_lm_weights"][row] > 0].tolist())
        masked_rows += bool(chosen)
        assert not chosen & {0, int(lengths[row]) - 1}  # never <s> or </s>
        for p in chosen:  # a masked continuation piece comes with the piece before it
            if table[tokens[row, p]] and p - 1 > 0:
                assert p - 1 in chosen, (row, p)
    # A short row whose one word has more pieces than its budget gets no mask (masking.py).
    assert masked_rows > 0.9 * len(recs)


def test_prepare_refuses_malformed_and_mismatched_vocabularies(prepared, roberta, tmp_path):
    wp_ident = json.load(open(os.path.join(prepared["wordpiece"], "metadata.json")))["tokenizer"]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES[:20]) + "\n", encoding="utf-8")

    def bad_dir(name, **files):
        d = tmp_path / name
        d.mkdir()
        for fname, body in files.items():
            (d / fname.replace("_", ".", 1)).write_text(body, encoding="utf-8")
        return str(d)

    good_vocab = open(os.path.join(roberta["files"], "vocab.json"), encoding="utf-8").read()
    good_merges = open(os.path.join(roberta["files"], "merges.txt"), encoding="utf-8").read()
    vocab_cases = {
        "vocab_json_truncated": (bad_dir("v1", vocab_json=good_vocab[:200], merges_txt=good_merges),
                                 "is not valid JSON"),
        "vocab_json_list": (bad_dir("v2", vocab_json="[1, 2]", merges_txt=good_merges),
                            "{token: id} object"),
        "merges_three_tokens": (bad_dir("v3", vocab_json=good_vocab,
                                        merges_txt="#version: 0.2\nĠ t\nh e x\n"),
                                "line 3"),
        "merges_unknown_token": (bad_dir("v4", vocab_json=good_vocab,
                                         merges_txt="#version: 0.2\nĠ t\nzz qq\n"),
                                 "out of vocabulary"),
        "no_mask": (bad_dir("v5", vocab_json=json.dumps({"<s>": 0, "<pad>": 1, "</s>": 2,
                                                          "<unk>": 3, "a": 4}),
                            merges_txt="#version: 0.2\n"), "lacks the special token(s) <mask>"),
        "tokenizer_json_broken": (bad_dir("t1", tokenizer_json='{"model": {"type": "BPE", '),
                                  "is not valid JSON"),
        "tokenizer_json_no_model": (bad_dir("t2", tokenizer_json='{"version": "1.0"}'),
                                    "no \"model\" object"),
        "tokenizer_json_wordlevel": (bad_dir("t3", tokenizer_json=json.dumps(
            {"model": {"type": "WordLevel", "vocab": {"a": 0}}})), "WordLevel model"),
        "tokenizer_json_id_gap": (bad_dir("t4", tokenizer_json=json.dumps(
            {"model": {"type": "BPE", "vocab": {"<s>": 0, "a": 2}, "merges": []},
             "pre_tokenizer": {"type": "ByteLevel"}})), "no token has the id 1"),
    }
    procs = {name: _bertjax("prepare", f"--input={corpus}", f"--vocab={vocab}",
                            f"--output_dir={tmp_path / ('out-' + name)}", "--no_nsp",
                            "--masking=dynamic")
             for name, (vocab, _) in vocab_cases.items()}
    # A BPE vocabulary handed to a directory prepared with WordPiece.
    procs["prepare_into_wordpiece_data"] = _bertjax(
        "prepare", f"--input={corpus}", f"--vocab={roberta['hf']}",
        f"--output_dir={prepared['wordpiece']}", "--no_nsp", "--masking=dynamic",
        "--max_seq_length=32", "--max_predictions_per_seq=5")
    for name, proc in procs.items():
        line = _one_error_line(proc)
        if name == "prepare_into_wordpiece_data":
            assert "another tokenizer" in line and "kind 'wordpiece' vs 'bpe'" in line, line
        else:
            assert vocab_cases[name][1] in line, (name, line)
            assert not (tmp_path / f"out-{name}").exists(), name
    # The WordPiece data are untouched.
    assert json.load(open(os.path.join(prepared["wordpiece"], "metadata.json")))[
        "tokenizer"] == wp_ident


@pytest.mark.slow  # two pretrain processes starting JAX and TensorFlow: ~30 s on a busy CPU
def test_pretrain_refuses_data_of_another_tokenizer(prepared, roberta, tmp_path):
    """A workdir of the WordPiece data given the BPE data, and BPE training data with WordPiece
    evaluation data: one line naming the mismatch, before any step."""
    bpe_ident = load_tokenizer(roberta["hf"]).identity()
    wp_ident = json.load(open(os.path.join(prepared["wordpiece"], "metadata.json")))["tokenizer"]
    workdir = tmp_path / "wd-wordpiece"
    workdir.mkdir()
    wd.write_identity(str(workdir), wp_ident)
    common = ["pretrain", "--config=configs/bert_tiny.py",
              *ps.overrides(prepared["bpe"], bpe_ident["vocab_size"], **{"train.num_steps": 2})]
    runs = {"workdir": _bertjax(*common, f"--workdir={workdir}"),
            "eval_data": _bertjax(*common, f"--workdir={tmp_path / 'wd-new'}",
                                  f"--config.data.eval_dir={prepared['wordpiece']}")}
    for name, proc in runs.items():
        line = _one_error_line(proc)
        assert "tokenizer mismatch" in line and "kind 'wordpiece' vs 'bpe'" in line, (name, line)
