"""Tokenizers: WordPiece parity with Hugging Face, SentencePiece, identities, bad vocabularies and
the train_vocab command line."""
import hashlib
import json
import os
import random
import subprocess
import sys

import pytest

from bertjax.errors import UserError
from bertjax.text import check_identity, load_tokenizer
from bertjax.text.base import Tokenizer
from bertjax.text.sentencepiece_tok import SentencePieceTokenizer
from bertjax.text.train_vocab import train_vocab
from bertjax.text.wordpiece import WordPieceTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Words the vocabularies are trained on; the samples below also hold characters never seen here
# (emoji, Hangul, most symbols), which must come out as [UNK].
WORDS = ("the quick brown fox jumps over lazy dog tokenization unbelievable running played Café "
         "naïve résumé Ångström Zürich São Paulo Ελληνικά русский язык 北京 天安门 東京 日本語 "
         "español über façade coöperate").split()

SAMPLES = [
    "Hello, World! This is a Test.",
    "Café naïve résumé Ångström ZÜRICH façade",
    "e\u0301 combining accent, ﬁ ligature and ＡＢＣ fullwidth",
    "北京天安门 東京タワー 日本語のテキスト 한국어 텍스트",
    "I ❤️ pizza 🍕 and 🤖 robots 👍🏽 🧑\u200d🤝\u200d🧑",
    "\"Quotes\" ‘single’ «guillemets» — dash … ellipsis $5.00 #tag @user 50% a&b <html>",
    "control\x00char\x07here\x1f and\ttab\r\nnewline\u200bzero\u200dwidth\ufeffbom "
    "\u00a0nbsp\u3000ideo",
    "a" * 101 + " " + "b" * 100 + " " + "quick" * 21,
    "[CLS] the fox [SEP] jumps [MASK]over[MASK] [PAD][UNK] [mask] [Mask] [unused0] [CLS]x",
    "don't won't it's O'Neil U.S.A. e.g. 3.14159 1,000,000",
    "Ελληνικά ΡΩΣΙΚΆ русский ЯЗЫК İstanbul ß Straße ǅ",
    "",
    "   \t\n  ",
    "\u0300\u0301 lone combining marks",
    "mixedCASE WithCamel unBELIEVABLE ✓ ★ ∑ √ ≠",
]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) + rng.choice(".!?,") for _ in range(400)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def vocab_dirs(corpus_file, tmp_path_factory):
    out = {}
    for lower_case in (True, False):
        d = str(tmp_path_factory.mktemp(f"vocab_lc{int(lower_case)}"))
        train_vocab(corpus_file, "wordpiece", 300, d, lower_case=lower_case, fmt="text")
        out[lower_case] = d
    return out


@pytest.fixture(scope="module")
def spm_dir(corpus_file, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("spm"))
    train_vocab(corpus_file, "sentencepiece", 120, d, lower_case=False, fmt="text")
    return d


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(path)


# ---------------------------------------------------------------------------------- WordPiece


@pytest.mark.parametrize("lower_case", [True, False], ids=["uncased", "cased"])
def test_wordpiece_equals_hugging_face(vocab_dirs, lower_case):
    from transformers import BertTokenizerFast
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    d = vocab_dirs[lower_case]
    ours = WordPieceTokenizer(os.path.join(d, "vocab.txt"))
    assert ours.lower_case is lower_case  # inferred from the vocabulary itself
    hf = BertTokenizerFast.from_pretrained(d, do_lower_case=lower_case)
    legacy = BertTokenizerLegacy(vocab_file=os.path.join(d, "vocab.txt"), do_lower_case=lower_case)
    for text in SAMPLES:
        assert ours.tokenize(text) == hf.tokenize(text), text
        assert ours.encode(text) == hf(text, add_special_tokens=False)["input_ids"], text
        if not lower_case and "e\u0301" in text:
            # HF's Python port composes characters (NFC) first; the original BERT code and the
            # fast tokenizer do not, so a decomposed "é" stays unknown in cased mode.
            continue
        assert ours.tokenize(text) == legacy.tokenize(text), text
    assert ours.encode_batch(SAMPLES) == [ours.encode(t) for t in SAMPLES]


def test_wordpiece_behaviour_on_the_hard_cases(vocab_dirs):
    """What the parity samples exercise, stated outright so the parity test cannot pass vacuously."""
    uncased = WordPieceTokenizer(os.path.join(vocab_dirs[True], "vocab.txt"))
    cased = WordPieceTokenizer(os.path.join(vocab_dirs[False], "vocab.txt"))
    assert uncased.identity()["strip_accents"] is True
    assert cased.identity()["strip_accents"] is False
    assert uncased.tokenize("Café NAÏVE Ångström") == ["cafe", "naive", "angstrom"]
    assert cased.tokenize("Café naïve") == ["Café", "naïve"]
    assert uncased.tokenize("北京天安门") == ["北", "京", "天", "安", "门"]
    assert uncased.tokenize("🤖") == ["[UNK]"]
    assert uncased.tokenize("a" * 101) == ["[UNK]"]
    assert uncased.tokenize("fox" * 33 + "f") != ["[UNK]"]  # exactly 100 characters is a word
    assert uncased.tokenize("fox\x00\x07jumps") == uncased.tokenize("foxjumps")
    assert uncased.tokenize("fox\u00a0\tjumps\r\n") == ["fox", "jumps"]
    assert uncased.tokenize("fox,jumps!") == ["fox", ",", "jumps", "!"]
    for tok in (uncased, cased):
        assert tok.tokenize("the[MASK]fox [CLS][SEP]") == ["the", "[MASK]", "fox", "[CLS]", "[SEP]"]
        assert tok.encode("[PAD] [UNK]") == [tok.pad_id, tok.unk_id]
        assert "[mask]" not in tok.tokenize("[mask]") and "[MASK]" not in tok.tokenize("[mask]")


def test_hand_written_vocab_golden(tmp_path):
    vocab = SPECIALS + ["[unused0]", "straw", "##berry", "##ber", "##ry", "berry", "jam", "##s",
                        ",", ".", "!", "é", "e"]
    path = _write(tmp_path / "vocab.txt", "\n".join(vocab) + "\n")
    tok = WordPieceTokenizer(path)
    assert tok.lower_case is True
    assert [tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id, tok.unk_id] == [2, 3, 4, 0, 1]
    assert tok.tokenize("Strawberry jams, BERRY!") == [
        "straw", "##berry", "jam", "##s", ",", "berry", "!"]
    assert tok.encode("strawberry jams") == [6, 7, 11, 12]
    assert tok.tokenize("strawberx") == ["[UNK]"]  # a word with no full cover is one [UNK]
    assert tok.tokenize("É é") == ["e", "e"]  # lower-cased and accent-stripped
    keep_accents = WordPieceTokenizer(path, lower_case=True, strip_accents=False)
    assert keep_accents.tokenize("É e") == ["é", "e"]
    assert [tok.is_continuation(i) for i in tok.encode("strawberry jams")] == [
        False, True, False, True]
    assert tok.continuation_mask.sum() == 4
    assert tok.convert_tokens_to_ids(["jam", "nope"]) == [11, tok.unk_id]
    assert tok.convert_ids_to_tokens([6, 7]) == ["straw", "##berry"]
    with pytest.raises(ValueError):
        tok.convert_ids_to_tokens([len(vocab)])
    assert isinstance(tok, Tokenizer)


def test_identity_save_and_reload(vocab_dirs, tmp_path):
    path = os.path.join(vocab_dirs[True], "vocab.txt")
    tok = WordPieceTokenizer(path)
    ident = tok.identity()
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert ident == {"kind": "wordpiece", "vocab_sha256": digest, "vocab_size": tok.vocab_size,
                     "lower_case": True, "strip_accents": True}
    json.dumps(ident)
    written = tok.save(str(tmp_path / "saved"))
    assert sorted(os.path.basename(p) for p in written) == [
        "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    assert load_tokenizer(str(tmp_path / "saved")).identity() == ident


def test_casing_from_hf_config_inference_and_override(vocab_dirs, tmp_path, capsys):
    from transformers import BertTokenizerFast

    cased_vocab = os.path.join(vocab_dirs[False], "vocab.txt")
    hf_dir = str(tmp_path / "hf")
    BertTokenizerFast.from_pretrained(vocab_dirs[False], do_lower_case=False).save_pretrained(hf_dir)
    # transformers 5 writes tokenizer.json and tokenizer_config.json only; 4.x also wrote vocab.txt.
    _write(os.path.join(hf_dir, "vocab.txt"), open(cased_vocab, "rb").read())
    assert load_tokenizer(hf_dir).lower_case is False  # from HF's tokenizer_config.json
    # No config beside it: the vocabulary decides; an explicit argument overrides and warns.
    bare = tmp_path / "bare"
    bare.mkdir()
    _write(bare / "vocab.txt", open(cased_vocab, "rb").read())
    assert load_tokenizer(str(bare)).lower_case is False
    capsys.readouterr()
    forced = load_tokenizer(str(bare / "vocab.txt"), lower_case=True)
    assert forced.lower_case is True and forced.strip_accents is True
    assert "cased vocabulary" in capsys.readouterr().err
    # The config's accent setting holds when its casing is kept.
    (bare / "tokenizer_config.json").write_text('{"do_lower_case": true, "strip_accents": false}')
    kept = load_tokenizer(str(bare))
    assert (kept.lower_case, kept.strip_accents) == (True, False)


def test_check_identity_names_the_differing_fields(vocab_dirs):
    a = WordPieceTokenizer(os.path.join(vocab_dirs[True], "vocab.txt")).identity()
    check_identity(a, dict(a), "the checkpoint")
    b = WordPieceTokenizer(os.path.join(vocab_dirs[False], "vocab.txt")).identity()
    with pytest.raises(UserError) as e:
        check_identity(a, b, "prepared data")
    msg = str(e.value)
    assert "prepared data" in msg and "\n" not in msg
    for field in ("vocab_sha256", "lower_case", "strip_accents", "vocab_size"):
        assert field in msg
    assert "kind" not in msg


@pytest.mark.parametrize("content,expect", [
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b"[PAD]\n[UNK]\x00\x01\x02binary\n", "is binary"),
    (b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncaf\xe9\n", "not UTF-8 (bad byte at offset 34)"),
    (b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n", "lacks the special token(s) [MASK]"),
    (b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld\nhello\n", "'hello' twice (lines 6 and 8)"),
    (b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n\nhello\n", "empty line 6"),
], ids=["empty", "blank", "binary", "latin1", "no-mask", "duplicate", "blank-line"])
def test_bad_vocab_files_are_refused(tmp_path, content, expect):
    path = _write(tmp_path / "vocab.txt", content)
    with pytest.raises(UserError) as e:
        WordPieceTokenizer(path)
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_missing_paths_are_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="no vocab.txt and no .model"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    _write(tmp_path / "vocab.txt", "\n".join(SPECIALS) + "\n")
    with pytest.raises(UserError, match="not valid JSON"):
        load_tokenizer(str(tmp_path))


# ------------------------------------------------------------------------------ SentencePiece


def test_sentencepiece_round_trip(spm_dir):
    import sentencepiece as spm

    model = os.path.join(spm_dir, "spiece.model")
    tok = load_tokenizer(spm_dir)
    assert isinstance(tok, SentencePieceTokenizer) and isinstance(tok, Tokenizer)
    assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id] == [0, 1, 2, 3, 4]
    assert tok.convert_ids_to_tokens(range(5)) == SPECIALS
    raw = spm.SentencePieceProcessor(model_file=model)
    text = "the quick brown fox jumps over the lazy dog"
    assert tok.encode(text) == raw.encode(text)
    assert tok.tokenize(text) == raw.encode(text, out_type=str)
    assert tok.decode(tok.encode(text)) == text
    assert tok.convert_tokens_to_ids(tok.tokenize(text)) == tok.encode(text)
    assert tok.encode_batch([text, "fox"]) == [tok.encode(text), tok.encode("fox")]
    # A typed [MASK] stays one piece (user-defined symbol) and is never a continuation.
    pieces = tok.tokenize("the [MASK] fox")
    assert "[MASK]" in pieces
    assert not any(tok.is_continuation(i) for i in range(5))
    for i, piece in enumerate(tok.convert_ids_to_tokens(range(5, tok.vocab_size))):
        assert tok.is_continuation(i + 5) == (not piece.startswith("\u2581")), piece
    with open(model, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert tok.identity() == {"kind": "sentencepiece", "vocab_sha256": digest,
                              "vocab_size": tok.vocab_size, "lower_case": False,
                              "strip_accents": False}
    lowered = load_tokenizer(model, lower_case=True)
    assert lowered.encode("THE FOX") == tok.encode("the fox")
    assert lowered.identity()["lower_case"] is True


def test_sentencepiece_model_checks(tmp_path, corpus_file):
    import io

    import sentencepiece as spm

    with pytest.raises(UserError, match="not a SentencePiece model"):
        SentencePieceTokenizer(_write(tmp_path / "bad.model", b"\x08\x96\x01garbage" * 10))
    blob = io.BytesIO()
    spm.SentencePieceTrainer.train(input=corpus_file, model_writer=blob, vocab_size=120,
                                   hard_vocab_limit=False, minloglevel=2)
    plain = _write(tmp_path / "plain.model", blob.getvalue())
    with pytest.raises(UserError, match=r"lacks the special piece\(s\) \[PAD\] \[UNK\] \[CLS\]"):
        SentencePieceTokenizer(plain)


# ------------------------------------------------------------------------------ train_vocab


def test_train_vocab_writes_specials_first_and_loads(vocab_dirs, spm_dir):
    for lower_case, d in vocab_dirs.items():
        with open(os.path.join(d, "vocab.txt"), encoding="utf-8") as f:
            assert f.read().split("\n")[:5] == SPECIALS
        cfg = json.load(open(os.path.join(d, "tokenizer_config.json")))
        assert cfg["do_lower_case"] is lower_case
        assert not [n for n in os.listdir(d) if n.endswith(".tmp")]
    assert sorted(os.listdir(spm_dir)) == ["spiece.model", "spiece.vocab", "tokenizer_config.json"]
    with pytest.raises(UserError, match="from another kind of vocabulary"):
        train_vocab(os.path.join(spm_dir, "spiece.vocab"), "wordpiece", 100, spm_dir)


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "bertjax.text.train_vocab", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


def test_train_vocab_cli(tmp_path, corpus_file):
    ok = _cli(f"--input={corpus_file}", "--kind=wordpiece", "--vocab_size=200",
              f"--out={tmp_path / 'v'}", "--lower_case=false", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "trained a wordpiece vocabulary" in ok.stdout
    assert load_tokenizer(str(tmp_path / "v")).identity()["lower_case"] is False

    _write(tmp_path / "empty.txt", b"")
    _write(tmp_path / "latin1.txt", "fine line\nna\xefve\n".encode("latin-1"))
    cases = {
        f"--input={tmp_path / 'nothing-*.txt'}": "no input files match",
        f"--input={tmp_path / 'empty.txt'}": "is empty",
        f"--input={tmp_path / 'latin1.txt'}": "byte 0xef at byte offset 12 (line 2)",
    }
    for arg, expect in cases.items():
        out = tmp_path / "never"
        bad = _cli(arg, f"--out={out}", "--vocab_size=100", cwd=tmp_path)
        assert bad.returncode == 2, bad.stderr
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], bad.stderr
        assert not out.exists() or not os.listdir(out)


def test_sentencepiece_lower_case_keeps_special_tokens_whole(tmp_path):
    import sentencepiece as spm

    from bertjax.text.sentencepiece_tok import SentencePieceTokenizer

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(["The cat sat on the mat.", "A dog ran in the park."] * 50))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=40,
        hard_vocab_limit=False, user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"],
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece="[PAD]", unk_piece="[UNK]")
    tok = SentencePieceTokenizer(str(tmp_path / "sp.model"), lower_case=True)
    ids = tok.encode("The [MASK] SAT")
    assert ids.count(tok.mask_id) == 1
    assert tok.encode("THE CAT") == tok.encode("the cat")
