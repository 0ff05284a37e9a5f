"""A labelled English dataset for the fine-tuning demo, built offline from Debian's wordnet-base:
each noun synset's definition, labelled with its WordNet lexicographer category (noun.animal,
noun.artifact, noun.food, ...: 25 classes). Tens of thousands of real sentences, so "does
pretraining pay" can be measured without the noise of a 200-example set.

    python -m bertjax.demo.wordnet --out=DIR [--wordnet_dir=/usr/share/wordnet]

Writes DIR/train.tsv, DIR/dev.tsv (`sentence\\tlabel`, label names) and DIR/labels.txt.
Nothing of it is committed; `make demo` installs wordnet-base and builds it.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import random
import re

from absl import app, flags

from bertjax.errors import UserError, user_errors_exit
from bertjax.store.files import write_atomic

DEFAULT_DIR = "/usr/share/wordnet"
LEXNAMES_MAN = "/usr/share/man/man5/lexnames.5WN.gz"


def lexnames(man_page: str = LEXNAMES_MAN) -> dict[int, str]:
    """File number -> category name, read from the package's own lexnames(5) table."""
    names: dict[int, str] = {}
    if os.path.exists(man_page):
        with gzip.open(man_page, "rt", encoding="utf-8", errors="replace") as f:
            for line in f:
                m = re.match(r"^(\d\d)\t(\w+\.\w+)\s*\t", line)
                if m:
                    names[int(m.group(1))] = m.group(2)
    return names


@dataclasses.dataclass(frozen=True)
class Synset:
    offset: int
    lex: int  # lexicographer file number: the fine-tuning label, never written into the text
    words: tuple[str, ...]
    hypernym: int | None  # the first hypernym's offset (instance hypernyms too)
    definition: str
    examples: tuple[str, ...]


POS_FILES = {"noun": "data.noun", "verb": "data.verb", "adj": "data.adj", "adv": "data.adv"}


def data_records(wordnet_dir: str, pos: str):
    """(head fields, gloss) of every synset line of data.<pos> (wndb(5)); the licence header's
    lines start with spaces."""
    path = os.path.join(wordnet_dir, POS_FILES[pos])
    if not os.path.isfile(path):
        raise UserError(f"{path} not found; install Debian's wordnet-base (apt-get install "
                        "wordnet-base)")
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith(" ") or " | " not in line:
                continue
            head, gloss = line.rstrip("\n").split(" | ", 1)
            yield head.split(), gloss


def noun_synsets(wordnet_dir: str) -> list[Synset]:
    """Every noun synset of data.noun (wndb(5): offset, lex file, type, word count in hex, the
    words with their lex ids, pointer count, pointers, then "| gloss")."""
    path = os.path.join(wordnet_dir, "data.noun")
    if not os.path.exists(path):
        raise UserError(f"{path} not found; install Debian's wordnet-base (apt-get install "
                        "wordnet-base) or pass --wordnet_dir")
    rows = []
    with open(path, encoding="utf-8", errors="strict") as f:
        for line in f:
            if line.startswith("  ") or "|" not in line:
                continue  # the licence header lines start with two spaces
            head, gloss = line.split("|", 1)
            fields = head.split()
            n_words = int(fields[3], 16)
            words = tuple(w.replace("_", " ") for w in fields[4:4 + 2 * n_words:2])
            at = 4 + 2 * n_words
            pointers = [fields[at + 1 + 4 * k: at + 5 + 4 * k] for k in range(int(fields[at]))]
            hypernym = next((int(p[1]) for p in pointers if p[0] in ("@", "@i")), None)
            # The gloss is 'definition; "example"; "example"': the definition, then quotations.
            parts = gloss.strip().split('; "')
            definition = parts[0].strip().rstrip(";").strip()
            examples = [" ".join(e.strip().rstrip(";").strip().strip('"').split())
                        for e in parts[1:]]
            rows.append(Synset(int(fields[0]), int(fields[1]), words, hypernym, definition,
                               tuple(e for e in examples if len(e.split()) >= 3)))
    return rows


def noun_definitions(wordnet_dir: str) -> list[tuple[str, int]]:
    """(definition, lexicographer file number) for every noun synset of three words or more."""
    return [(s.definition, s.lex) for s in noun_synsets(wordnet_dir)
            if len(s.definition.split()) >= 3]


def gloss_documents(wordnet_dir: str, exclude: set[str], per_document: int = 6) -> list[list[str]]:
    """Unlabelled pretraining text from the noun glosses, written as a dictionary is: each
    synset's words and definition ("dog, domestic dog: a member of the genus Canis ...") followed
    by its example sentences. A document is a run of `per_document` synsets in the order of
    WordNet's own hypernym tree (the hyponyms of one synset side by side), the way an
    encyclopedia's sections follow a subject, so a next sentence is about a related thing; the
    lexicographer category (the fine-tuning label) is not read. Synsets whose definition is in
    `exclude` (the fine-tuning dev set) are left out, words and all."""
    units = []
    for s in sorted(noun_synsets(wordnet_dir), key=lambda s: (s.hypernym or -1, s.offset)):
        if s.definition.replace("\t", " ") in exclude or len(s.definition.split()) < 3:
            continue
        units.append([f"{', '.join(s.words)}: {s.definition}", *s.examples])
    return [sum(units[i:i + per_document], []) for i in range(0, len(units), per_document)]


def write_gloss_corpus(out_dir: str, dev_tsv: str, wordnet_dir: str = DEFAULT_DIR,
                       shards: int = 2) -> dict:
    """DIR/gloss-0000K.txt in the original pretraining format, the dev definitions excluded."""
    with open(dev_tsv, encoding="utf-8") as f:
        exclude = {line.rsplit("\t", 1)[0] for line in list(f)[1:]}
    docs = gloss_documents(wordnet_dir, exclude)
    os.makedirs(out_dir, exist_ok=True)
    for k in range(shards):
        body = "\n".join("".join(s + "\n" for s in doc) for doc in docs[k::shards])
        write_atomic(os.path.join(out_dir, f"gloss-{k:05d}.txt"), body)
    return {"documents": len(docs), "sentences": sum(len(d) for d in docs),
            "excluded_dev_definitions": len(exclude)}


def build(out_dir: str, wordnet_dir: str = DEFAULT_DIR, n_train: int = 8000, n_dev: int = 2000,
          seed: int = 0) -> dict:
    names = lexnames()
    rows = [(d, names.get(lex, f"lex{lex:02d}")) for d, lex in noun_definitions(wordnet_dir)]
    rows = [r for r in rows if r[1] != "noun.Tops"]  # a handful of root concepts
    random.Random(seed).shuffle(rows)
    if len(rows) < n_train + n_dev:
        raise UserError(f"{wordnet_dir} gives {len(rows)} definitions, fewer than "
                        f"{n_train + n_dev}; lower --n_train/--n_dev")
    train, dev = rows[:n_train], rows[n_train:n_train + n_dev]
    labels = sorted({label for _, label in train})
    dev = [r for r in dev if r[1] in labels]
    os.makedirs(out_dir, exist_ok=True)

    def tsv(part):
        clean = (s.replace("\t", " ") for s, _ in part)
        return "sentence\tlabel\n" + "".join(f"{s}\t{lab}\n" for s, (_, lab) in zip(clean, part))

    write_atomic(os.path.join(out_dir, "train.tsv"), tsv(train))
    write_atomic(os.path.join(out_dir, "dev.tsv"), tsv(dev))
    write_atomic(os.path.join(out_dir, "labels.txt"), "\n".join(labels) + "\n")
    counts = {lab: sum(1 for _, x in dev if x == lab) for lab in labels}
    return {"train": len(train), "dev": len(dev), "labels": len(labels),
            "dev_majority_share": max(counts.values()) / len(dev)}


def main(argv):
    del argv
    if not flags.FLAGS.out:
        raise UserError("--out is required")
    stats = build(flags.FLAGS.out, flags.FLAGS.wordnet_dir, flags.FLAGS.n_train, flags.FLAGS.n_dev)
    write_atomic(os.path.join(flags.FLAGS.out, "stats.json"), json.dumps(stats, indent=2) + "\n")
    if flags.FLAGS.gloss_out:
        g = write_gloss_corpus(flags.FLAGS.gloss_out, os.path.join(flags.FLAGS.out, "dev.tsv"),
                               flags.FLAGS.wordnet_dir)
        print(f"wordnet glosses: {g['documents']} unlabelled documents, {g['sentences']} "
              f"sentences, the {g['excluded_dev_definitions']} dev definitions left out "
              f"({flags.FLAGS.gloss_out})")
    print(f"wordnet topics: {stats['train']} train / {stats['dev']} dev definitions, "
          f"{stats['labels']} labels, dev majority class {100 * stats['dev_majority_share']:.1f}% "
          f"({flags.FLAGS.out})")


if __name__ == "__main__":
    flags.DEFINE_string("out", "", "Output directory.")
    flags.DEFINE_string("wordnet_dir", DEFAULT_DIR, "Where wordnet-base put data.noun.")
    flags.DEFINE_integer("n_train", 8000, "Training definitions.")
    flags.DEFINE_integer("n_dev", 2000, "Dev definitions.")
    flags.DEFINE_string("gloss_out", "", "Also write the unlabelled gloss corpus here.")
    app.run(user_errors_exit(main))
