"""Tiny generated task data in the public file layouts (GLUE TSVs, SQuAD JSON, CoNLL columns) and
a matching tiny WordPiece vocabulary, for the tests' end-to-end fine-tuning runs.

Every data set carries a simple signal (a per-label word, a fixed question pattern, capitalised
entity names from small lists), so a smoke run can look for the loss falling and the metric
rising. Nothing here is real data; nothing needs the network.
"""
from __future__ import annotations

import json
import os
import random
import string

from bertjax.data.tasks import glue

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FILLER = ["the", "a", "cat", "dog", "bird", "runs", "sits", "sees", "on", "near", "mat", "tree",
          "house", "big", "small", "red", "blue", "green", "quickly", "slowly", "and", "then",
          "lives", "in", "where", "does", "live", "who", "works", "at", "with", "of", "is", "to"]
# One signal word per class index; regression counts how often "alpha" appears.
SIGNALS = ["alpha", "beta", "gamma"]
NAMES = ["anna", "boris", "chen", "dana", "emil", "fatima", "goran", "hana", "ivan", "jun",
         "kofi", "lena"]
CITIES = ["paris", "oslo", "lima", "cairo", "quito", "seoul", "rome", "delhi"]
ORGS = ["acme", "globex", "initech", "umbrella"]
TOY_WORDS = sorted(set(FILLER + SIGNALS + NAMES + CITIES + ORGS))


def toy_vocab(extra_words: tuple[str, ...] = ()) -> list[str]:
    """Specials, whole toy words, then single letters/digits with and without "##" so that any
    lower-case ASCII word still tokenizes (into many pieces when it is not a toy word)."""
    chars = list(string.ascii_lowercase + string.digits)
    punct = list(".,?!'\"-:;()$%&")
    words = sorted(set(TOY_WORDS) | set(extra_words))
    vocab = SPECIALS + words + chars + ["##" + c for c in chars] + punct
    seen, out = set(), []
    for t in vocab:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def toy_tokenizer(directory: str, extra_words: tuple[str, ...] = ()):
    """Writes the toy vocab.txt into directory and loads it as an uncased WordPiece tokenizer
    (the real bertjax.text one, so toy runs exercise the same code as real ones)."""
    from bertjax.text.wordpiece import WordPieceTokenizer

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(toy_vocab(extra_words)) + "\n")
    return WordPieceTokenizer(path, lower_case=True)


# ---------------------------------------------------------------- GLUE

def _sentence(rng: random.Random, signal: str | None = None, n: int = 6) -> str:
    words = [rng.choice(FILLER) for _ in range(n)]
    if signal is not None:
        words.insert(rng.randrange(len(words) + 1), signal)
    return " ".join(words) + " ."


def _labelled(rng, task: glue.GlueTask):
    """(text_a, text_b, label string); the label's signal word sits in the last text."""
    if task.is_regression:
        k = rng.randrange(6)
        b = " ".join(["alpha"] * k + [rng.choice(FILLER) for _ in range(5 - k)]) + " ."
        return _sentence(rng), b, f"{float(k):.3f}"
    i = rng.randrange(len(task.labels))
    if task.is_pair:
        return _sentence(rng), _sentence(rng, SIGNALS[i]), task.labels[i]
    return _sentence(rng, SIGNALS[i]), None, task.labels[i]


def _write(path: str, lines: list[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))


def _glue_rows(task: glue.GlueTask, split: str, n: int, rng: random.Random) -> list[str]:
    """Rows laid out exactly as the public GLUE files for this task and split."""
    test = split in task.submission
    out = []
    name = task.name
    if name == "cola" and not test:
        for _ in range(n):
            a, _b, y = _labelled(rng, task)
            out.append(f"toy1\t{y}\t{'' if y == '1' else '*'}\t{a}")
        return out
    header = {
        "cola": ["index", "sentence"],
        "sst2": ["sentence", "label"] if not test else ["index", "sentence"],
        "mrpc": ["Quality" if not test else "index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        "stsb": ["index", "genre", "filename", "year", "old_index", "source1", "source2",
                 "sentence1", "sentence2"] + ([] if test else ["score"]),
        "qqp": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"] if not test
                else ["id", "question1", "question2"]),
        "mnli": ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                 "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
                 "sentence2"] + ([] if test else (["label1", "gold_label"] if split == "train"
                                                  else [f"label{i}" for i in range(1, 6)]
                                                  + ["gold_label"])),
        "qnli": ["index", "question", "sentence"] + ([] if test else ["label"]),
        "rte": ["index", "sentence1", "sentence2"] + ([] if test else ["label"]),
        "wnli": ["index", "sentence1", "sentence2"] + ([] if test else ["label"]),
        "ax": ["index", "sentence1", "sentence2"],
    }[name]
    out.append("\t".join(header))
    for i in range(n):
        a, b, y = _labelled(rng, task)
        values = {"index": str(i), "id": str(1000 + i), "Quality": y, "label": y, "score": y,
                  "is_duplicate": y, "gold_label": y, "qid1": str(2 * i), "qid2": str(2 * i + 1),
                  "#1 ID": str(10 * i), "#2 ID": str(10 * i + 1), "genre": "toy",
                  "filename": "toy", "year": "2024", "old_index": str(i), "source1": "none",
                  "source2": "none", "promptID": str(i), "pairID": f"{i}n"}
        text_cols = task.text_columns
        values[text_cols[0]] = a
        if b is not None:
            values[text_cols[1]] = b
        for col in header:
            if col.endswith("_parse"):
                values[col] = "( toy )"
            elif col.startswith("label") and col != "label":
                values[col] = y
        out.append("\t".join(values[c] for c in header))
    return out


def make_toy_glue_dir(root: str, task: str, n_train: int = 64, n_dev: int = 32,
                      n_test: int = 16, seed: int = 0) -> str:
    """Writes every split of one GLUE task under root in the public layout; returns root (the
    GLUE directory to pass as data_dir)."""
    spec = glue.get_task(task)
    rng = random.Random(f"{spec.name}-{seed}")
    for split, (rel, _) in spec.splits.items():
        n = n_train if split == "train" else n_test if split in spec.submission else n_dev
        sub = "diagnostic" if spec.name == "ax" else spec.dir_name
        _write(os.path.join(root, sub, rel), _glue_rows(spec, split, n, rng))
    return root


# ---------------------------------------------------------------- SQuAD

def make_toy_squad(path: str, version: str = "1.1", n_paragraphs: int = 8,
                   sentences_per_paragraph: int = 6, seed: int = 0) -> str:
    """Writes a SQuAD-format JSON file: passages of "NAME lives in CITY ." facts with filler
    words between them, and "where does NAME live ?" questions. For 2.0 each passage also gets
    one unanswerable question (is_impossible) per three answerable ones, about a name it does
    not mention."""
    rng = random.Random(f"squad-{version}-{seed}")
    v2 = version.startswith("2")
    data, qid = [], 0
    for p in range(n_paragraphs):
        # Keep some names out of every passage for the unanswerable questions.
        names = rng.sample(NAMES, min(sentences_per_paragraph, len(NAMES) - 4))
        qas = []
        context = ""
        for name in names:
            city = rng.choice(CITIES)
            filler = " ".join(rng.choice(FILLER) for _ in range(rng.randrange(3, 9)))
            fact = f"{name.title()} lives in {city.title()}."
            sentence = f"{filler.capitalize()} and then {fact}"
            start = len(context) + (1 if context else 0) + sentence.index(fact) + len(
                f"{name.title()} lives in ")
            context = f"{context} {sentence}" if context else sentence
            answer = city.title()
            qa = {"id": f"q{qid}", "question": f"Where does {name.title()} live?",
                  "answers": [{"text": answer, "answer_start": start}]}
            if v2:
                qa["is_impossible"] = False
            qas.append(qa)
            qid += 1
        if v2:
            for name in [n for n in NAMES if n not in names][: max(1, len(names) // 3)]:
                qas.append({"id": f"q{qid}", "question": f"Where does {name.title()} live?",
                            "answers": [], "is_impossible": True})
                qid += 1
        data.append({"title": f"toy{p}", "paragraphs": [{"context": context, "qas": qas}]})
    payload = {"version": "v2.0" if v2 else "1.1", "data": data}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f)
    return path


# ---------------------------------------------------------------- CoNLL

def make_toy_conll(root: str, n_train: int = 64, n_dev: int = 24, n_test: int = 24,
                   scheme: str = "iob2", seed: int = 0) -> dict[str, str]:
    """Writes train.txt/dev.txt/test.txt in CoNLL-2003 columns (token POS chunk tag) with
    -DOCSTART- lines; entities are capitalised names (PER), cities (LOC) and companies (ORG),
    some two words long. Returns {split: path}."""
    rng = random.Random(f"conll-{scheme}-{seed}")
    paths = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        lines = ["-DOCSTART- -X- -X- O", ""]
        for s in range(n):
            if s and s % 10 == 0:
                lines += ["-DOCSTART- -X- -X- O", ""]
            tokens = []
            for k in range(rng.randrange(1, 4)):
                # Sometimes entities touch, which is where IOB1 needs its B- tags.
                if k == 0 or rng.random() < 0.7:
                    tokens += [(w, "O") for w in rng.sample(FILLER, 2)]
                kind, pool = rng.choice([("PER", NAMES), ("LOC", CITIES), ("ORG", ORGS)])
                words = [w.title() for w in rng.sample(pool, rng.choice([1, 1, 2]))]
                prev_type = tokens[-1][1][2:] if tokens and tokens[-1][1] != "O" else ""
                for j, w in enumerate(words):
                    if scheme == "iob2":
                        tag = ("B-" if j == 0 else "I-") + kind
                    else:  # IOB1: B- only where a chunk directly follows one of its type
                        tag = ("B-" if j == 0 and prev_type == kind else "I-") + kind
                    tokens.append((w, tag))
            tokens.append((".", "O"))
            lines += [f"{w} NN I-NP {t}" for w, t in tokens] + [""]
        path = os.path.join(root, f"{split}.txt")
        _write(path, lines)
        paths[split] = path
    return paths
