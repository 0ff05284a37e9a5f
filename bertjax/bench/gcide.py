"""An out-of-domain retrieval set: GCIDE's 1913 Webster definitions as queries, WordNet's
definitions as the corpus (issue 27, item 4).

GCIDE comes from Debian's dict-gcide (`apt-get install dict-gcide`): a dictd database,
/usr/share/dictd/gcide.index and gcide.dict.dz. Nothing is downloaded at run time.

The rule, in full:
- Parts of speech: verbs, adjectives and adverbs only. The benchmark's training pairs and the
  demo's pretraining text are WordNet nouns, so no evaluation synset and no evaluation part of
  speech is trained on; synsets named in `exclude` (the training synsets) are dropped as well.
- Query: for each (headword, part of speech), over the GCIDE entries of that part of speech
  headed by that word (its first headword), in dictionary order, the first sense that is 1913
  Webster text (source tag exactly [1913 Webster] or [Webster 1913 Suppl.]: senses GCIDE took
  from WordNet or added later are skipped, since they would match WordNet by construction),
  not marked [Obs.], not a quotation, cross-reference or usage note, with 3 words or more.
- Relevant documents: every WordNet synset of that part of speech with the headword among its
  lemmas, each with relevance 1. A 1913 sense cannot be aligned to one WordNet sense without
  a person judging it, so every sense of the word counts.
- Only words with 1 to `max_senses` WordNet senses of that part of speech are queries: with
  dozens of senses ("run" has 41 verb synsets) the task becomes naming the word, not matching
  a meaning.
- Corpus: the definitions of every synset relevant to some sampled query.
"""
from __future__ import annotations

import gzip
import json
import os
import random
import re

from bertjax.demo import wordnet
from bertjax.errors import UserError

GCIDE_DIR = "/usr/share/dictd"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}
WEBSTER_TAGS = ("1913 Webster", "Webster 1913 Suppl.")
POS_FILES = {"verb": "data.verb", "adj": "data.adj", "adv": "data.adv"}


# --------------------------------------------------------------------------- dictd files


def dictd_number(text: str) -> int:
    """dictd's index numbers: base64 digits, most significant first, no padding."""
    value = 0
    for ch in text:
        if ch not in _B64_VALUE:
            raise ValueError(f"not a dictd base64 number: {text!r}")
        value = value * 64 + _B64_VALUE[ch]
    return value


def read_index(path: str) -> list[tuple[str, int, int]]:
    """(headword, offset, length) per line of a dictd .index file, in file order."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3:
                out.append((parts[0], dictd_number(parts[1]), dictd_number(parts[2])))
    return out


def read_dict(path: str) -> bytes:
    """The whole text of a .dict or .dict.dz: dictzip is gzip with an extra header field, so
    gzip reads it; the benchmark needs every entry, so random access buys nothing."""
    if path.endswith(".dz"):
        with gzip.open(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def gcide_files(gcide_dir: str) -> tuple[str, str] | str:
    """(index, dict) paths, or a sentence saying what is missing."""
    index = os.path.join(gcide_dir, "gcide.index")
    for name in ("gcide.dict.dz", "gcide.dict"):
        data = os.path.join(gcide_dir, name)
        if os.path.isfile(index) and os.path.isfile(data):
            return index, data
    return (f"absent: no gcide.index and gcide.dict.dz in {gcide_dir} "
            "(apt-get install dict-gcide)")


def entries(index_path: str, dict_path: str) -> list[str]:
    """The text of every distinct entry, in dictionary order. The index lists an entry under
    its inflections and the phrases inside it too, so an index word need not be the entry's
    headword: the headword is read from the entry itself."""
    data = read_dict(dict_path)
    seen, out = set(), []
    for word, offset, length in sorted(read_index(index_path), key=lambda r: (r[1], r[2])):
        if (offset, length) in seen or word.startswith("00-"):
            continue
        seen.add((offset, length))
        out.append(data[offset:offset + length].decode("utf-8", "replace"))
    return out


# --------------------------------------------------------------------------- GCIDE entries

_HEAD = re.compile(r"^(?P<head>[^\\\n]+?)\s*\\[^\\\n]*\\(?:\s*\([^)\n]*\))?\s*,?\s*"
                   r"(?P<pos>[^\[\n]*)")
_TAG_LINE = re.compile(r"^\s*\[([^\]]*)\]\s*$")
_WORD = re.compile(r"^[A-Za-z][A-Za-z' -]*$")


def entry_pos(pos_text: str) -> str | None:
    """GCIDE's part-of-speech label -> verb, adj, adv or None ("v. t.", "a.", "p. a.", "adv.";
    the first label counts when there are several, as in "a. & n.")."""
    p = pos_text.strip()
    if p.startswith("v."):
        return "verb"
    if p.startswith(("a.", "adj.", "p. a.")):
        return "adj"
    if p.startswith("adv."):
        return "adv"
    return None


def _skip_brackets(text: str) -> str:
    """text without its leading [...] groups (inflections and etymology, which may span lines
    and nest: "[Compar. {Happier}; superl. {Happiest}.] [From {Hap} chance.]")."""
    while True:
        s = text.lstrip(" ,\n")
        if not s.startswith("["):
            return text
        depth, end = 0, len(s)
        for i, ch in enumerate(s):
            depth += {"[": 1, "]": -1}.get(ch, 0)
            if depth == 0:
                end = i + 1
                break
        text = s[end:]


def clean_sense(chunk: str) -> str | None:
    """One sense's text as a plain definition, or None when the chunk is no definition."""
    lines = [ln for ln in chunk.split("\n") if ln.strip()]
    if not lines:
        return None
    indent = len(lines[0]) - len(lines[0].lstrip())
    text = " ".join(ln.strip() for ln in lines)
    # Quotations sit deeper than senses and end in their author ("--Shak.").
    if indent >= 8 or re.search(r"--[A-Z]", text) or "[Obs.]" in text:
        return None
    text = re.sub(r"^(\[[^\]]*\]\s*)*(\d+\.\s*)?(\([a-z]\)\s*)?", "", text)
    if text.startswith(("Syn:", "Usage:", "Note:", "{", "See ", "Same as")):
        return None
    text = re.split(r";\s*as,|;\s*--|\s--\s", text)[0]
    text = re.sub(r"\[[^\]]*\]", "", text).replace("{", "").replace("}", "")
    text = re.sub(r"\s+", " ", text).strip(" ;,:")
    return text if len(text.split()) >= 3 else None


def parse_entry(text: str) -> tuple[str, str | None, list[tuple[str, str]]] | None:
    """(headword, part of speech or None, [(sense text, source tag)]) of one entry, or None
    when its first line is not `Headword \\pron\\, pos.`."""
    m = _HEAD.match(text)
    if not m:
        return None
    body = _skip_brackets(text[m.end():])
    senses, chunk = [], []
    for line in body.split("\n"):
        tag = _TAG_LINE.match(line)
        if tag:
            senses.append(("\n".join(chunk), tag.group(1).strip()))
            chunk = []
        else:
            chunk.append(line)
    return m.group("head").strip(), entry_pos(m.group("pos")), senses


def webster_definitions(texts) -> dict[tuple[str, str], str]:
    """(lower-case headword, pos) -> its query definition, by the module's rule; `texts` are
    entries in dictionary order."""
    out: dict[tuple[str, str], str] = {}
    for text in texts:
        parsed = parse_entry(text)
        if parsed is None:
            continue
        head, pos, senses = parsed
        key = (head.lower(), pos)
        if pos is None or key in out or not _WORD.match(head):
            continue
        for chunk, tag in senses:
            if tag in WEBSTER_TAGS:
                definition = clean_sense(chunk)
                if definition:
                    out[key] = definition
                    break
    return out


# --------------------------------------------------------------------------- WordNet side


def wordnet_synsets(wordnet_dir: str, pos: str) -> list[tuple[str, list[str], str]]:
    """(synset id, lower-case lemmas, definition) of every synset of one part of speech; ids as
    bench.embeddings names them ("verb-00001740")."""
    out = []
    for fields, gloss in wordnet.data_records(wordnet_dir, pos):
        n = int(fields[3], 16)
        # Adjective lemmas may carry a position marker: "galore(ip)".
        lemmas = [re.sub(r"\([a-z]+\)$", "", w).replace("_", " ").lower()
                  for w in fields[4:4 + 2 * n:2]]
        definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
        if definition:
            out.append((f"{pos}-{fields[0]}", lemmas, definition))
    return out


def build_gcide(out: str, gcide_dir: str, wordnet_dir: str, n_queries: int,
                exclude: set[str] = frozenset(), max_senses: int = 3, seed: int = 0) -> dict:
    """Writes the BEIR directory out/gcide-beir and returns its texts and judgements:
    {"beir", "queries", "docs", "qrels" ([{doc index: 1.0}] per query), "query_words",
    "doc_ids", "candidates"}; raises UserError when the files are missing."""
    files = gcide_files(gcide_dir)
    if isinstance(files, str):
        raise UserError(files)
    definitions = webster_definitions(entries(*files))
    by_lemma: dict[tuple[str, str], list[str]] = {}
    gloss: dict[str, str] = {}
    for pos in POS_FILES:
        for sid, lemmas, definition in wordnet_synsets(wordnet_dir, pos):
            if sid in exclude:
                continue
            gloss[sid] = definition
            for lemma in dict.fromkeys(lemmas):
                by_lemma.setdefault((lemma, pos), []).append(sid)
    candidates = sorted(k for k in definitions if 1 <= len(by_lemma.get(k, ())) <= max_senses)
    picked = random.Random(seed).sample(candidates, min(n_queries, len(candidates)))
    doc_ids = sorted({sid for k in picked for sid in by_lemma[k]})
    row = {sid: i for i, sid in enumerate(doc_ids)}
    beir = os.path.join(out, "gcide-beir")
    os.makedirs(os.path.join(beir, "qrels"), exist_ok=True)
    qid = lambda k: "g-" + k[1] + "-" + k[0].replace(" ", "_")  # noqa: E731
    with open(os.path.join(beir, "corpus.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"_id": sid, "title": "", "text": gloss[sid]}) + "\n"
                     for sid in doc_ids)
    with open(os.path.join(beir, "queries.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"_id": qid(k), "text": definitions[k]}) + "\n" for k in picked)
    with open(os.path.join(beir, "qrels", "test.tsv"), "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{qid(k)}\t{sid}\t1\n" for k in picked for sid in by_lemma[k])
    return {"beir": beir, "queries": [definitions[k] for k in picked],
            "docs": [gloss[sid] for sid in doc_ids],
            "qrels": [{row[sid]: 1.0 for sid in by_lemma[k]} for k in picked],
            "query_words": picked, "doc_ids": doc_ids, "candidates": len(candidates)}
