r"""Builds the demo corpus offline from the test data that ships with the `gensim` package.

    python -m bertjax.demo.corpus --out=demo_out/corpus

- Pretraining text: the shortened English Wikipedia dump (about a hundred articles, CC BY-SA).
  Markup is stripped with gensim's wikicorpus helpers; headings, lists, tables, captions and the
  reference sections are dropped; every article becomes one document of sentences, written in the
  original format (one sentence per line, a blank line between documents) into DIR/wiki-NNNNN.txt
  shards. Every `heldout_every`-th article goes to DIR/heldout/wiki-heldout-00000.txt instead.
- Classification: the 200 labelled movie-review sentences (Pang & Lee polarity) as
  DIR/polarity/{train,dev}.tsv with a "sentence\tlabel" header and labels 0 (negative) and
  1 (positive), the layout of GLUE SST-2; the dev split is stratified and seeded.
DIR/manifest.json, written last, records what was built; each file is written under a temporary
name and renamed when complete.
"""
from __future__ import annotations

import bz2
import glob
import importlib.util
import json
import os
import random
import re
import time

from absl import app, flags

from bertjax.data.corpus import split_sentences
from bertjax.errors import UserError, user_errors_exit
from bertjax.store.files import AtomicTextWriter, sha256_file, write_atomic

# Sections after which an article holds lists of links and citations, not prose.
_TAIL_SECTIONS = {"see also", "references", "external links", "further reading", "notes",
                  "bibliography", "sources", "footnotes", "citations", "works cited"}
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")
_EMPHASIS = re.compile(r"'{2,}")
_NON_PROSE_START = tuple("*#:;|!{}<")
# Gallery and image lines that survive markup removal: "Name.jpg|caption", "|alt=...", "200px".
_MEDIA = re.compile(r"^(file|image):|\.(jpe?g|png|svg|gif|tiff?)\s*\||\|\s*alt=|\d+x?\d*px", re.I)
# Templates removed from inside parentheses (pronunciations, dates) leave "()" or "(; , )".
_EMPTY_PARENS = re.compile(r"\s*\([\s;,]*\)")
_PROSE_END = tuple('.!?"\')')
MIN_PARAGRAPH_WORDS = 6


def gensim_test_data_dir() -> str:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the gensim package is not installed; `pip install gensim==4.4.0` (it "
                        "ships the demo text) or pass --source_dir")
    return os.path.join(list(spec.submodule_search_locations)[0], "test", "test_data")


def _find(source_dir: str, pattern: str) -> str:
    matches = sorted(glob.glob(os.path.join(source_dir, pattern)))
    if not matches:
        raise UserError(f"no file matching {pattern} in {source_dir}; install gensim 4.4 (its test "
                        "data holds the demo text) or pass --source_dir")
    return matches[0]


def article_sentences(wikitext: str) -> list[str]:
    """Prose sentences of one article's wiki markup, reference sections and non-prose dropped."""
    # gensim is in requirements-dev.txt (the demo's data), not requirements.txt, and slow to import.
    from gensim.corpora.wikicorpus import filter_wiki

    sentences = []
    for line in filter_wiki(wikitext).split("\n"):
        line = line.strip()
        heading = _HEADING.match(line)
        if heading:
            if heading.group(2).strip().lower() in _TAIL_SECTIONS:
                break
            continue
        if not line or line.startswith(_NON_PROSE_START) or _MEDIA.search(line):
            continue
        line = " ".join(_EMPTY_PARENS.sub("", _EMPHASIS.sub("", line)).split())
        if len(line.split()) < MIN_PARAGRAPH_WORDS or not line.endswith(_PROSE_END):
            continue
        sentences.extend(split_sentences(line))
    return sentences


def wiki_articles(dump_path: str):
    """(title, sentences) per article of a dump; redirects and disambiguation pages skipped."""
    from gensim.corpora.wikicorpus import extract_pages  # see article_sentences

    with bz2.open(dump_path, "rb") as f:
        for title, text, _ in extract_pages(f, filter_namespaces=("0",)):
            head = text.lstrip()[:20].upper()
            if head.startswith("#REDIRECT") or "(disambiguation)" in title:
                continue
            sentences = article_sentences(text)
            if len(sentences) >= 2:
                yield title, sentences


def _write_documents(path: str, documents: list[list[str]]) -> int:
    with AtomicTextWriter(path) as out:
        for i, doc in enumerate(documents):
            if i:
                out.write("\n")
            out.write("".join(s + "\n" for s in doc))
    return os.path.getsize(path)


def polarity_rows(path: str) -> list[tuple[str, int]]:
    """(sentence, label) from gensim's pang_lee_polarity.cor: "__label__neg|pos sentence" lines."""
    rows = []
    # The file is Windows-1252 (its dashes are byte 0x97, its accents Latin-1), not UTF-8.
    with open(path, encoding="cp1252") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            tag, _, sentence = line.partition(" ")
            labels = {"__label__neg": 0, "__label__pos": 1}
            if tag not in labels or not sentence.strip():
                raise UserError(f"{path}:{number} is not '__label__neg|pos sentence'; the gensim "
                                "test data differs from version 4.4, reinstall gensim==4.4.0")
            rows.append((" ".join(sentence.split()), labels[tag]))
    return rows


def split_rows(rows, dev_fraction: float, seed: int):
    """A dev split stratified by label, drawn with a fixed seed; row order kept in each split."""
    rng = random.Random(seed)
    dev = set()
    for label in sorted({r[1] for r in rows}):
        members = [i for i, r in enumerate(rows) if r[1] == label]
        dev.update(rng.sample(members, round(dev_fraction * len(members))))
    train = [r for i, r in enumerate(rows) if i not in dev]
    held = [r for i, r in enumerate(rows) if i in dev]
    return train, held


def _write_tsv(path: str, rows) -> None:
    body = "sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in rows)
    write_atomic(path, body)


def build_demo_corpus(out_dir: str, shards: int = 4, heldout_every: int = 10,
                      source_dir: str = "", dev_fraction: float = 0.2, seed: int = 0,
                      max_articles: int = 0) -> dict:
    """Writes the demo corpus into out_dir and returns the manifest (also DIR/manifest.json)."""
    if shards < 1:
        raise UserError(f"--shards={shards} must be at least 1")
    if heldout_every < 2:
        raise UserError(f"--heldout_every={heldout_every} must be at least 2")
    source_dir = source_dir or gensim_test_data_dir()
    if not os.path.isdir(source_dir):
        raise UserError(f"source directory {source_dir} does not exist; pass gensim's "
                        "test/test_data directory with --source_dir")
    dump = _find(source_dir, "enwiki-*shortened*.bz2")
    polarity = _find(source_dir, "pang_lee_polarity.cor")
    start = time.perf_counter()

    train_docs, heldout_docs = [], []
    for n, (_, sentences) in enumerate(wiki_articles(dump)):
        if max_articles and n >= max_articles:
            break
        (heldout_docs if n % heldout_every == heldout_every - 1 else train_docs).append(sentences)
    if len(train_docs) < 2 or not heldout_docs:
        raise UserError(f"only {len(train_docs)} training and {len(heldout_docs)} held-out "
                        f"articles came out of {dump}; use more articles or a smaller "
                        "--heldout_every")

    shards = min(shards, len(train_docs))
    files = []
    wiki = {"documents": 0, "sentences": 0, "bytes": 0}
    for k in range(shards):
        # Round-robin keeps the shards about equal in size.
        docs = train_docs[k::shards]
        path = os.path.join(out_dir, f"wiki-{k:05d}.txt")
        wiki["bytes"] += _write_documents(path, docs)
        wiki["documents"] += len(docs)
        wiki["sentences"] += sum(len(d) for d in docs)
        files.append(path)
    heldout_path = os.path.join(out_dir, "heldout", "wiki-heldout-00000.txt")
    heldout = {"documents": len(heldout_docs), "sentences": sum(len(d) for d in heldout_docs),
               "bytes": _write_documents(heldout_path, heldout_docs)}
    files.append(heldout_path)

    train_rows, dev_rows = split_rows(polarity_rows(polarity), dev_fraction, seed)
    for name, rows in (("train", train_rows), ("dev", dev_rows)):
        path = os.path.join(out_dir, "polarity", f"{name}.tsv")
        _write_tsv(path, rows)
        files.append(path)

    manifest = {
        "wiki": dict(wiki, shards=shards,
                     files=[os.path.relpath(p, out_dir) for p in files[:shards]]),
        "heldout": dict(heldout, files=[os.path.relpath(heldout_path, out_dir)]),
        "polarity": {"train": len(train_rows), "dev": len(dev_rows),
                     "labels": {"0": "negative", "1": "positive"},
                     "files": ["polarity/train.tsv", "polarity/dev.tsv"]},
        "sources": {os.path.basename(p): sha256_file(p) for p in (dump, polarity)},
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_atomic(os.path.join(out_dir, "manifest.json"), json.dumps(manifest, indent=2) + "\n")
    return manifest


def define_flags() -> None:
    """Flags of the command line only: importing this module must not define them (another
    entrypoint importing it would clash)."""
    flags.DEFINE_string("out", "", "Output directory.")
    flags.DEFINE_integer("shards", 4, "Number of pretraining text shards.")
    flags.DEFINE_integer("heldout_every", 10, "Every Nth article goes to the held-out file.")
    flags.DEFINE_string("source_dir", "", "gensim test data dir; default: the installed gensim's.")
    flags.DEFINE_integer("max_articles", 0, "Use at most this many articles (0 = all).")


FLAGS = flags.FLAGS


@user_errors_exit
def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])}; all options are --flags")
    if not FLAGS.out:
        raise UserError("--out is required: the directory to write the demo corpus into")
    m = build_demo_corpus(FLAGS.out, shards=FLAGS.shards, heldout_every=FLAGS.heldout_every,
                          source_dir=FLAGS.source_dir, max_articles=FLAGS.max_articles)
    w, h, p = m["wiki"], m["heldout"], m["polarity"]
    print(f"wiki: {w['documents']} documents, {w['sentences']} sentences, "
          f"{w['bytes'] / 1e6:.2f} MB in {w['shards']} shards ({FLAGS.out}/wiki-*.txt)")
    print(f"held out: {h['documents']} documents, {h['sentences']} sentences, "
          f"{h['bytes'] / 1e6:.2f} MB ({FLAGS.out}/heldout/)")
    print(f"polarity: {p['train']} train and {p['dev']} dev sentences ({FLAGS.out}/polarity/)")
    print(f"built in {m['seconds']:.1f} s; manifest {FLAGS.out}/manifest.json")


if __name__ == "__main__":
    define_flags()
    app.run(main)
