r"""Tokenization throughput: bertjax WordPiece against Hugging Face on the same text, same run.

    bertjax bench-tokenize --corpus=demo_out/corpus [--vocab=DIR_or_vocab.txt]

Reads every sentence of the corpus (original format by default), then times, best of --repeats:
  - bertjax WordPieceTokenizer.encode, one sentence per call, and encode_batch;
  - Hugging Face BertTokenizerFast (transformers), one sentence per call and a batched call;
  - Hugging Face BertTokenizerLegacy, the pure-Python port of the original algorithm, one pass.
The fast methods' ids must equal ours exactly; for the pure-Python one the number of sentences
with identical ids is reported (it composes characters (NFC) first, which the original code and
the fast tokenizers do not, so rare texts may differ). Without --corpus the demo corpus is built in a temporary
directory; without --vocab a WordPiece vocabulary of --vocab_size is trained on the corpus.
Prints a Markdown table (MB/s of UTF-8 text, tokens/s).
"""
from __future__ import annotations

import os
import platform
import tempfile
import time

from absl import app, flags

from bertjax.data.corpus import iter_documents
from bertjax.demo.corpus import build_demo_corpus
from bertjax.errors import UserError, user_errors_exit
from bertjax.text import resolve_tokenizer_file
from bertjax.text.train_vocab import train_vocab
from bertjax.text.wordpiece import WordPieceTokenizer


def _best_time(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _batches(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_benchmark(corpus: str, fmt: str, vocab: str, vocab_size: int, lower_case: bool,
                  repeats: int, batch_size: int, legacy: bool) -> dict:
    # transformers is a dev dependency (the comparison), read offline: the flag must be set
    # before it is imported.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertTokenizerFast

    tmp = tempfile.TemporaryDirectory(prefix="bench_tokenize_")
    if not corpus:
        corpus = os.path.join(tmp.name, "corpus")
        build_demo_corpus(corpus)
        corpus = os.path.join(corpus, "wiki-*.txt")
    sentences = [s for doc in iter_documents(corpus, fmt) for s in doc]
    if not vocab:
        vocab = os.path.join(tmp.name, "vocab")
        train_vocab(corpus, "wordpiece", vocab_size, vocab, lower_case=lower_case, fmt=fmt)
    kind, vocab_file = resolve_tokenizer_file(vocab)
    if kind != "wordpiece":
        raise UserError(f"--vocab={vocab} is a {kind} model; this benchmark compares WordPiece")
    vocab_dir = os.path.join(tmp.name, "hf")
    os.makedirs(vocab_dir, exist_ok=True)
    with open(vocab_file, "rb") as src, open(os.path.join(vocab_dir, "vocab.txt"), "wb") as dst:
        dst.write(src.read())

    ours = WordPieceTokenizer(vocab_file, lower_case=lower_case)
    hf = BertTokenizerFast.from_pretrained(vocab_dir, do_lower_case=lower_case)
    n_bytes = sum(len(s.encode("utf-8")) for s in sentences)
    batches = _batches(sentences, batch_size)

    methods = {
        "bertjax WordPiece, encode() per sentence": lambda: [ours.encode(s) for s in sentences],
        f"bertjax WordPiece, encode_batch({batch_size})":
            lambda: [ids for b in batches for ids in ours.encode_batch(b)],
        "HF BertTokenizerFast, per sentence":
            lambda: [hf(s, add_special_tokens=False)["input_ids"] for s in sentences],
        f"HF BertTokenizerFast, batch of {batch_size}":
            lambda: [ids for b in batches
                     for ids in hf(b, add_special_tokens=False)["input_ids"]],
    }
    reference = None
    rows = []
    for name, fn in methods.items():
        fn()  # warm-up: first-call set-up must not count
        seconds, ids = _best_time(fn, repeats)
        if reference is None:
            reference = ids
        elif ids != reference:
            raise RuntimeError(f"{name} produced different ids from bertjax WordPiece")
        tokens = sum(len(x) for x in ids)
        rows.append((name, seconds, tokens))
    if legacy:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

        slow = BertTokenizerLegacy(vocab_file=os.path.join(vocab_dir, "vocab.txt"),
                                   do_lower_case=lower_case)
        seconds, ids = _best_time(lambda: [slow.encode(s, add_special_tokens=False)
                                           for s in sentences], 1)
        same = sum(a == b for a, b in zip(ids, reference, strict=True))
        rows.append((f"HF BertTokenizerLegacy (pure Python), per sentence; "
                     f"{same}/{len(sentences)} sentences identical", seconds,
                     sum(len(x) for x in ids)))
    tmp.cleanup()
    return {"sentences": len(sentences), "bytes": n_bytes, "vocab_size": ours.vocab_size,
            "lower_case": lower_case, "rows": rows}


def format_table(result: dict) -> str:
    lines = ["| method | seconds | MB/s | tokens/s |", "|---|---:|---:|---:|"]
    for name, seconds, tokens in result["rows"]:
        lines.append(f"| {name} | {seconds:.3f} | {result['bytes'] / 1e6 / seconds:.2f} | "
                     f"{tokens / seconds:,.0f} |")
    return "\n".join(lines)


def define_flags() -> None:
    """Flags of the command line only: importing this module must not define them (another
    entrypoint importing it would clash)."""
    flags.DEFINE_string("corpus", "", "Corpus files or directory; default: build the demo corpus.")
    flags.DEFINE_string("format", "auto", "Corpus format (see bertjax.data.corpus).")
    flags.DEFINE_string("vocab", "", "vocab.txt or a directory holding one; default: train one.")
    flags.DEFINE_integer("vocab_size", 30522, "Vocabulary size trained when --vocab is empty.")
    flags.DEFINE_bool("lower_case", True, "Lower-case (uncased model).")
    flags.DEFINE_integer("repeats", 3, "Timed passes per method; the best is reported.")
    flags.DEFINE_integer("batch_size", 1024, "Sentences per batched call.")
    flags.DEFINE_bool("legacy", True, "Also time the pure-Python original algorithm (one pass).")


FLAGS = flags.FLAGS


@user_errors_exit
def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])}; all options are --flags")
    if FLAGS.repeats < 1 or FLAGS.batch_size < 1:
        raise UserError("--repeats and --batch_size must be at least 1")
    result = run_benchmark(FLAGS.corpus, FLAGS.format, FLAGS.vocab, FLAGS.vocab_size,
                           FLAGS.lower_case, FLAGS.repeats, FLAGS.batch_size, FLAGS.legacy)
    print(f"{result['sentences']} sentences, {result['bytes'] / 1e6:.2f} MB, vocabulary "
          f"{result['vocab_size']}, lower_case={result['lower_case']}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, "
          f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}")
    print(format_table(result))


if __name__ == "__main__":
    define_flags()
    app.run(main)
