r"""Trains a WordPiece, SentencePiece or byte-level BPE vocabulary on a corpus.

    bertjax train-vocab --input='corpus/*.txt' --kind=wordpiece \
        --vocab_size=30522 --out=vocab_dir [--lower_case=true]

Writes DIR/vocab.txt (WordPiece) or DIR/spiece.model + DIR/spiece.vocab (SentencePiece), and
DIR/tokenizer_config.json with the casing. The special tokens come first: [PAD]=0, [UNK]=1,
[CLS]=2, [SEP]=3, [MASK]=4; WordPiece tokens follow in sorted order (words, then "##" pieces),
because the trainer's own order varies between runs.

--kind=bpe trains RoBERTa's tokenizer, a byte-level BPE (GPT-2's byte alphabet, no lower-casing),
and writes DIR/vocab.json + DIR/merges.txt (RoBERTa's files), DIR/tokenizer.json and
DIR/tokenizer_config.json (RobertaTokenizer), which transformers' AutoTokenizer loads. Its specials
are RoBERTa's: <s>=0, <pad>=1, </s>=2, <unk>=3, and <mask> last. The Rust BPE trainer is
deterministic here, unlike its WordPiece use: every symbol it starts from is in the 256-character
byte alphabet, which it numbers in character order, so ties between equally frequent pairs (broken
by those numbers) fall the same way in every process (checked: fresh processes write the same
bytes). --exact therefore changes nothing for bpe. Files are written under temporary names and renamed once the
vocabulary has been checked to load. On a tiny corpus the vocabulary may come out smaller than
--vocab_size; the size reached is printed.
"""
from __future__ import annotations

import heapq
import io
import json
import os
import tempfile
import time
from collections import Counter, defaultdict

from absl import app, flags
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from bertjax.data.corpus import DOC_UNITS, FORMATS, expand_inputs, iter_documents
from bertjax.errors import UserError, user_errors_exit
from bertjax.text.config_file import CONFIG_NAME
from bertjax.text.bpe import ByteLevelBPETokenizer
from bertjax.text.tokenizer_json import read_tokenizer_json
from bertjax.text.wordpiece import WordPieceTokenizer

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# RoBERTa's ids: <s>=0, <pad>=1, </s>=2, <unk>=3; <mask> is added last, after the learned tokens.
BPE_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]
BPE_MASK = "<mask>"
KINDS = ("wordpiece", "sentencepiece", "bpe")
_OUTPUTS = {"wordpiece": ("vocab.txt",), "sentencepiece": ("spiece.model", "spiece.vocab"),
            "bpe": ("vocab.json", "merges.txt", "tokenizer.json")}


class _Sentences:
    """Streams sentences to a trainer and keeps the first error: the Rust and C++ trainers either
    swallow or re-wrap exceptions raised inside the iterator, so it is re-raised afterwards."""

    def __init__(self, documents, lower_case: bool):
        self._documents = documents
        self._lower = lower_case
        self.error: Exception | None = None
        self.documents = 0
        self.sentences = 0
        self.characters = 0

    def __iter__(self):
        try:
            for doc in self._documents:
                self.documents += 1
                for sentence in doc:
                    self.sentences += 1
                    self.characters += len(sentence)
                    yield sentence.lower() if self._lower else sentence
        except Exception as e:  # re-raised by check(); the trainer must not see it
            self.error = e

    def check(self) -> None:
        if self.error is not None:
            raise self.error
        if self.sentences == 0:
            raise UserError("the input holds no text (0 sentences); check --input and --format")


def train_wordpiece(sentences: _Sentences, vocab_size: int, lower_case: bool,
                    min_frequency: int = 2, limit_alphabet: int = 1000) -> bytes:
    """vocab.txt bytes, normalised exactly as WordPieceTokenizer will tokenize."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=lower_case, lowercase=lower_case)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        limit_alphabet=limit_alphabet, show_progress=False,
                                        special_tokens=SPECIAL_TOKENS)
    # Lower-casing is the normaliser's job here, so the iterator passes the text as it is.
    tok.train_from_iterator(iter(sentences), trainer)
    sentences.check()
    learned = [t for t in tok.get_vocab() if t not in SPECIAL_TOKENS]
    # The trainer's id order changes from run to run (hash-map order); WordPiece matching does not
    # depend on ids, so a sorted order makes reruns give the same file (up to ties at the cut-off).
    learned.sort(key=lambda t: (t.startswith("##"), t))
    return ("\n".join(SPECIAL_TOKENS + learned) + "\n").encode("utf-8")


def _word_counts(sentences, lower_case: bool):
    """Pre-tokenized word -> count, with the normaliser and pre-tokenizer the trainer and
    WordPieceTokenizer use (deterministic functions; only the Rust trainer's merging is not)."""
    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                      strip_accents=lower_case, lowercase=lower_case)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for sentence in sentences:
        counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(sentence)))
    return counts


def train_wordpiece_exact(sentences: _Sentences, vocab_size: int, lower_case: bool,
                          min_frequency: int = 2, limit_alphabet: int = 1000) -> bytes:
    """vocab.txt bytes from the same procedure as the Rust trainer (BPE merges over words split
    into a first character and "##" continuation characters), with every tie broken by the
    pieces' text. The Rust trainer breaks ties between equally frequent pairs by ids it hands out
    in hash-map order, which changes from process to process; this one gives the same bytes on
    every run. Pure Python: seconds for the demo corpus, minutes for a Wikipedia-sized one."""
    counts = _word_counts(sentences, lower_case)
    sentences.check()
    chars: Counter = Counter()
    for word, n in counts.items():
        for c in word:
            chars[c] += n
    alphabet = {c for c, _ in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0]))[:limit_alphabet]}
    # A word with a character outside the alphabet becomes [UNK] whole in WordPiece matching, so
    # it takes no part in the merges.
    words = [([w[0]] + ["##" + c for c in w[1:]], n) for w, n in sorted(counts.items())
             if all(c in alphabet for c in w)]
    vocab = list(SPECIAL_TOKENS)
    seen = set(vocab)
    for piece in sorted({p for symbols, _ in words for p in symbols},
                        key=lambda t: (t.startswith("##"), t)):
        if piece not in seen:
            vocab.append(piece)
            seen.add(piece)

    pair_counts: dict = defaultdict(int)
    where: dict = defaultdict(set)
    for i, (symbols, n) in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += n
            where[pair].add(i)
    heap = [(-n, pair) for pair, n in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg:
            continue  # stale entry: the count changed since it was pushed
        if -neg < min_frequency:
            break
        a, b = pair
        merged = a + b[2:]
        if merged not in seen:
            vocab.append(merged)
            seen.add(merged)
        changed = set()
        for i in sorted(where.pop(pair)):
            symbols, n = words[i]
            for old in zip(symbols, symbols[1:]):
                pair_counts[old] -= n
                changed.add(old)
            out, k = [], 0
            while k < len(symbols):
                if k + 1 < len(symbols) and symbols[k] == a and symbols[k + 1] == b:
                    out.append(merged)
                    k += 2
                else:
                    out.append(symbols[k])
                    k += 1
            words[i] = (out, n)
            for new in zip(out, out[1:]):
                pair_counts[new] += n
                where[new].add(i)
                changed.add(new)
        for p in changed:
            if pair_counts.get(p, 0) <= 0:
                pair_counts.pop(p, None)
                where.pop(p, None)
            elif p != pair:
                heapq.heappush(heap, (-pair_counts[p], p))
        pair_counts.pop(pair, None)
    learned = sorted(vocab[len(SPECIAL_TOKENS):], key=lambda t: (t.startswith("##"), t))
    return ("\n".join(SPECIAL_TOKENS + learned) + "\n").encode("utf-8")


def train_sentencepiece(sentences: _Sentences, vocab_size: int, model_type: str = "unigram",
                        character_coverage: float = 0.9995,
                        max_sentences: int = 10_000_000) -> tuple[bytes, bytes]:
    """(spiece.model, spiece.vocab) bytes with the BERT specials at ids 0-4."""
    import sentencepiece as spm  # see train_vocab: WordPiece trainings must not load it

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece="[PAD]", unk_piece="[UNK]",
            user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"],
            # Tiny corpora cannot fill the requested size; take what they give.
            hard_vocab_limit=False, input_sentence_size=max_sentences,
            shuffle_input_sentence=True, num_threads=os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as e:
        sentences.check()
        detail = " ".join(str(e).split())[:300]
        raise UserError(f"SentencePiece training failed: {detail}") from None
    sentences.check()
    blob = model.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=blob)
    lines = [f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}" for i in range(sp.get_piece_size())]
    return blob, ("\n".join(lines) + "\n").encode("utf-8")


def train_bpe(sentences: _Sentences, vocab_size: int, min_frequency: int = 2):
    """A byte-level BPE (RoBERTa's tokenizer) as a ByteLevelBPETokenizer, not yet written: the
    four specials, GPT-2's 256-character byte alphabet, the learned merges, then <mask>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=min_frequency,
                                  special_tokens=BPE_SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(iter(sentences), trainer)
    sentences.check()
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[t] for t in tokens] != list(range(len(tokens))) or tokens[:4] != BPE_SPECIAL_TOKENS:
        raise RuntimeError("the BPE trainer returned ids out of order")  # not expected
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return ByteLevelBPETokenizer("the trained vocabulary", [*tokens, BPE_MASK], merges)


def _check_out_dir(out_dir: str, kind: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out={out_dir} is a file; pass a directory")
    other = [n for k, names in _OUTPUTS.items() if k != kind for n in names]
    stale = [n for n in other if os.path.exists(os.path.join(out_dir, n))]
    if stale:
        raise UserError(f"--out={out_dir} already holds {', '.join(stale)} from another kind of "
                        "vocabulary; pass an empty or new directory")


def write_outputs(out_dir: str, files: dict[str, bytes], verify) -> list[str]:
    """Writes every file under a temporary name, lets verify(temp_paths) load them, then renames
    them into place with tokenizer_config.json last."""
    os.makedirs(out_dir, exist_ok=True)
    temps = {}
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            temps[name] = tmp
        verify(temps)
        order = sorted(temps, key=lambda n: n == CONFIG_NAME)
        for name in order:
            os.replace(temps[name], os.path.join(out_dir, name))
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
    return [os.path.join(out_dir, n) for n in files]


def train_vocab(input_spec: str, kind: str, vocab_size: int, out_dir: str,
                lower_case: bool | None = None, fmt: str = "auto", text_field: str = "text",
                doc_unit: str = "paragraph", tfds_data_dir: str = "", tfds_split: str = "train",
                **options) -> dict:
    """Trains and writes a vocabulary; returns a summary (files, sizes, corpus counts).
    lower_case=None is true for wordpiece and sentencepiece, false for bpe (which is cased)."""
    if kind not in KINDS:
        raise UserError(f"--kind={kind!r} is not one of {', '.join(KINDS)}")
    if kind == "bpe":
        if lower_case:
            raise UserError("--kind=bpe trains RoBERTa's byte-level BPE, which is cased; drop "
                            "--lower_case (or lower-case the corpus yourself)")
        if vocab_size < 256 + len(BPE_SPECIAL_TOKENS) + 1:
            raise UserError(f"--vocab_size={vocab_size} is too small for a byte-level BPE; it "
                            "holds the 256 byte characters and 5 specials, pass at least a few "
                            "hundred more")
    lower_case = kind != "bpe" if lower_case is None else bool(lower_case)
    if vocab_size < len(SPECIAL_TOKENS) + 2:
        raise UserError(f"--vocab_size={vocab_size} is too small; it includes the "
                        f"{len(SPECIAL_TOKENS)} special tokens, pass at least a few hundred")
    if not out_dir:
        raise UserError("--out is required: the directory to write the vocabulary into")
    if not input_spec:
        raise UserError("--input is required: corpus files (glob, comma-separated) or tfds:NAME")
    if not (input_spec.startswith("tfds:") or fmt == "tfds"):
        expand_inputs(input_spec)  # fail on missing or empty files before touching --out
    _check_out_dir(out_dir, kind)
    docs = iter_documents(input_spec, fmt, text_field=text_field, doc_unit=doc_unit,
                          data_dir=tfds_data_dir, split=tfds_split)
    start = time.perf_counter()
    config = json.dumps({"do_lower_case": bool(lower_case),
                         "strip_accents": bool(lower_case) if kind == "wordpiece" else False},
                        indent=2) + "\n"
    if kind == "bpe":
        sentences = _Sentences(docs, lower_case=False)
        trained = train_bpe(sentences, vocab_size, min_frequency=options.get("min_frequency", 2))
        files = {"vocab.json": trained.vocab_json().encode(),
                 "merges.txt": trained.merges_txt().encode(),
                 "tokenizer.json": trained.backend().to_str().encode(),
                 CONFIG_NAME: (json.dumps(trained.hf_tokenizer_config(), indent=2,
                                          sort_keys=True) + "\n").encode()}

        def verify(t):
            # Both spellings must load, and as the same tokenizer.
            a = ByteLevelBPETokenizer.from_files(t["vocab.json"], t["merges.txt"])
            b = ByteLevelBPETokenizer.from_tokenizer_json(
                t["tokenizer.json"], read_tokenizer_json(t["tokenizer.json"]))
            if a.identity() != b.identity() or a.identity() != trained.identity():
                raise RuntimeError("vocab.json + merges.txt and tokenizer.json differ")

        load = lambda: ByteLevelBPETokenizer.from_files(os.path.join(out_dir, "vocab.json"),
                                                        os.path.join(out_dir, "merges.txt"))
    elif kind == "wordpiece":
        sentences = _Sentences(docs, lower_case=False)
        trainer = train_wordpiece_exact if options.get("exact") else train_wordpiece
        vocab = trainer(sentences, vocab_size, lower_case,
                                min_frequency=options.get("min_frequency", 2),
                                limit_alphabet=options.get("limit_alphabet", 1000))
        files = {"vocab.txt": vocab, CONFIG_NAME: config.encode()}
        verify = lambda t: WordPieceTokenizer(t["vocab.txt"], lower_case=lower_case)
        load = lambda: WordPieceTokenizer(os.path.join(out_dir, "vocab.txt"), lower_case=lower_case)
    else:
        # Imported only here: a WordPiece training must not depend on sentencepiece's protobuf
        # module loading (it fails outright when the installed protobuf runtime is older).
        from bertjax.text.sentencepiece_tok import SentencePieceTokenizer

        # SentencePiece has no lower-casing of its own; the tokenizer lower-cases before encoding.
        sentences = _Sentences(docs, lower_case=lower_case)
        model, vocab = train_sentencepiece(
            sentences, vocab_size, model_type=options.get("model_type", "unigram"),
            character_coverage=options.get("character_coverage", 0.9995),
            max_sentences=options.get("max_sentences", 10_000_000))
        files = {"spiece.model": model, "spiece.vocab": vocab, CONFIG_NAME: config.encode()}
        verify = lambda t: SentencePieceTokenizer(t["spiece.model"], lower_case=lower_case)
        load = lambda: SentencePieceTokenizer(os.path.join(out_dir, "spiece.model"),
                                              lower_case=lower_case)
    written = write_outputs(out_dir, files, verify)
    tokenizer = load()
    return {
        "files": written,
        "vocab_size": tokenizer.vocab_size,
        "identity": tokenizer.identity(),
        "documents": sentences.documents,
        "sentences": sentences.sentences,
        "characters": sentences.characters,
        "seconds": time.perf_counter() - start,
    }


def define_flags() -> None:
    """Flags of the command line only: importing this module must not define them (another
    entrypoint importing it would clash)."""
    flags.DEFINE_string("input", "", "Corpus: globs (comma-separated), a directory, or tfds:NAME.")
    flags.DEFINE_string("kind", "wordpiece", "wordpiece | sentencepiece | bpe (RoBERTa's byte-level BPE)")
    flags.DEFINE_integer("vocab_size", 30522, "Target vocabulary size, special tokens included.")
    flags.DEFINE_string("out", "", "Output directory.")
    flags.DEFINE_bool("lower_case", None, "Lower-case the text (WordPiece also strips accents). "
                      "Default: true for wordpiece and sentencepiece; bpe is always cased.")
    flags.DEFINE_string("format", "auto", "Corpus format: " + " | ".join(FORMATS))
    flags.DEFINE_string("text_field", "text", "JSONL field or TFDS feature holding the text.")
    flags.DEFINE_string("doc_unit", "paragraph", "For --format=text: " + " | ".join(DOC_UNITS))
    flags.DEFINE_string("tfds_data_dir", "", "TFDS data_dir for tfds:NAME inputs.")
    flags.DEFINE_string("tfds_split", "train", "TFDS split for tfds:NAME inputs.")
    flags.DEFINE_integer("min_frequency", 2, "WordPiece and BPE: minimum count for a merge.")
    flags.DEFINE_integer("limit_alphabet", 1000, "WordPiece: most distinct characters kept.")
    flags.DEFINE_bool("exact", False,
                      "WordPiece: the pure-Python trainer, ties broken by text, so every run writes "
                      "the same bytes (the Rust trainer's ties follow hash-map order); slower. "
                      "bpe: always exact, the flag changes nothing.")
    flags.DEFINE_string("model_type", "unigram", "SentencePiece: unigram | bpe")
    flags.DEFINE_float("character_coverage", 0.9995, "SentencePiece: share of characters covered.")
    flags.DEFINE_integer("max_sentences", 10_000_000,
                         "SentencePiece: sentences sampled for training (it holds them in memory).")


FLAGS = flags.FLAGS


@user_errors_exit
def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])}; all options are --flags")
    summary = train_vocab(
        FLAGS.input, FLAGS.kind, FLAGS.vocab_size, FLAGS.out, lower_case=FLAGS.lower_case,
        fmt=FLAGS.format, text_field=FLAGS.text_field, doc_unit=FLAGS.doc_unit,
        tfds_data_dir=FLAGS.tfds_data_dir, tfds_split=FLAGS.tfds_split,
        min_frequency=FLAGS.min_frequency, limit_alphabet=FLAGS.limit_alphabet, exact=FLAGS.exact,
        model_type=FLAGS.model_type, character_coverage=FLAGS.character_coverage,
        max_sentences=FLAGS.max_sentences)
    print(f"trained a {FLAGS.kind} vocabulary of {summary['vocab_size']} tokens "
          f"(asked {FLAGS.vocab_size}) on {summary['documents']} documents, "
          f"{summary['sentences']} sentences, {summary['characters'] / 1e6:.2f} M characters "
          f"in {summary['seconds']:.1f} s")
    for path in summary["files"]:
        print(f"wrote {path}")
    print(f"identity: {summary['identity']}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
