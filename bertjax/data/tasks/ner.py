"""NER on CoNLL-2003-style column files: reading, first-sub-token labelling, and decoding token
predictions back to one tag per word.

Only the first piece of each word carries a label (label_weights 1); the other pieces, [CLS],
[SEP] and padding carry weight 0, so the loss and the predictions are per word, which is how the
entity-level scores are defined.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from bertjax.data import corpus
from bertjax.data.tasks import features as F
from bertjax.errors import UserError
from bertjax.text.base import Tokenizer


@dataclasses.dataclass
class NerSentence:
    tokens: list[str]
    tags: list[str]
    lines: list[int]     # 1-based source line of each token, for error messages
    source: str = ""


def read_conll(path: str) -> list[NerSentence]:
    """Token in the first column, tag in the last; a blank line ends a sentence; -DOCSTART-
    lines are document markers and are skipped."""
    if not os.path.isfile(path):
        raise UserError(f"NER file not found: {path}; expected a CoNLL-2003-style file with "
                        f"'token ... tag' per line and blank lines between sentences")
    sentences: list[NerSentence] = []
    tokens, tags, lines = [], [], []

    def flush():
        if tokens:
            sentences.append(NerSentence(list(tokens), list(tags), list(lines), path))
            tokens.clear()
            tags.clear()
            lines.clear()

    for lineno, line in enumerate(corpus.iter_lines(path), start=1):
        cols = line.split()
        if not cols:
            flush()
            continue
        if cols[0] == "-DOCSTART-":
            flush()
            continue
        if len(cols) < 2:
            raise UserError(f"{path}:{lineno}: expected 'token ... tag' columns, found "
                            f"{line.strip()!r}")
        tokens.append(cols[0])
        tags.append(cols[-1])
        lines.append(lineno)
    flush()
    return sentences


def label_list(sentences: list[NerSentence]) -> list[str]:
    """The tag set of (training) sentences: "O" first, then the others sorted, so the same data
    always gives the same ids."""
    tags = {t for s in sentences for t in s.tags}
    return (["O"] if "O" in tags else []) + sorted(tags - {"O"})


@dataclasses.dataclass
class NerFeatures:
    """arrays: input_ids, segment_ids, input_mask, labels [N,S] int32, label_weights [N,S]
    float32 (1 on the first piece of each word).
    sentence_index [N]: the sentence each row came from (a long sentence spans several rows).
    word_ids [N,S]: the word (index within its sentence) of every piece, -1 for [CLS], [SEP],
    padding."""
    arrays: dict[str, np.ndarray]
    sentence_index: np.ndarray
    word_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.sentence_index)


def featurize(sentences: list[NerSentence], tokenizer: Tokenizer, labels: list[str],
              max_seq_length: int) -> NerFeatures:
    """Sentences whose pieces do not fit are split at word boundaries into several rows, so every
    word is predicted once; a single word longer than a row keeps its first pieces."""
    room = max_seq_length - tokenizer.num_special(False)
    # Specials build_inputs puts before and after the pieces ([CLS] and [SEP], <s> and </s>).
    layout, _ = tokenizer.build_inputs([-1])
    lead, trail = layout.index(-1), len(layout) - layout.index(-1) - 1
    if room < 1:
        raise UserError(f"max_seq_length {max_seq_length} is too short for NER")
    label_ids = {t: i for i, t in enumerate(labels)}
    rows = {k: [] for k in ("input_ids", "segment_ids", "input_mask", "labels", "label_weights")}
    sentence_index, word_rows = [], []

    def emit(si, chunk):
        ids, segments = tokenizer.build_inputs([p for _, _, p in chunk])
        words = [-1] * lead + [w for w, _, _ in chunk] + [-1] * trail
        lab = [0] * lead + [y for _, y, _ in chunk] + [0] * trail
        first = [0.0] * lead + [1.0 if j == 0 or chunk[j - 1][0] != w else 0.0
                                for j, (w, _, _) in enumerate(chunk)] + [0.0] * trail
        pad = max_seq_length - len(ids)
        rows["input_ids"].append(ids + [tokenizer.pad_id] * pad)
        rows["segment_ids"].append(segments + [0] * pad)
        rows["input_mask"].append([1] * len(ids) + [0] * pad)
        rows["labels"].append([y if f else 0 for y, f in zip(lab, first, strict=True)] + [0] * pad)
        rows["label_weights"].append(first + [0.0] * pad)
        word_rows.append(words + [-1] * pad)
        sentence_index.append(si)

    for si, sent in enumerate(sentences):
        chunk = []
        for wi, (word, tag) in enumerate(zip(sent.tokens, sent.tags, strict=True)):
            word_ids = tokenizer.encode(word)
            if tag not in label_ids:
                raise UserError(f"{sent.source}:{sent.lines[wi]}: tag {tag!r} is not in the label "
                                f"list {labels}; add it to the labels or fix the file")
            # A word that tokenizes to nothing still needs a position to be predicted at.
            ids = word_ids[:room] or [tokenizer.unk_id]
            if len(chunk) + len(ids) > room:
                emit(si, chunk)
                chunk = []
            chunk.extend((wi, label_ids[tag], p) for p in ids)
        if chunk:
            emit(si, chunk)
    return NerFeatures(
        arrays=F.stack(rows, {"label_weights": np.float32}, max_seq_length, ("labels",)),
        sentence_index=np.asarray(sentence_index, np.int32),
        word_ids=np.asarray(word_rows, np.int32).reshape(-1, max_seq_length),
    )


def decode(predictions, feats: NerFeatures, labels: list[str],
           sentences: list[NerSentence]) -> list[list[str]]:
    """predictions: label ids [N,S] or logits [N,S,C] -> one tag per word of every sentence,
    read at each word's first piece."""
    pred = np.asarray(predictions)
    if pred.ndim == 3:
        pred = pred.argmax(-1)
    if pred.shape != feats.word_ids.shape:
        raise ValueError(f"predictions {pred.shape} do not match features {feats.word_ids.shape}")
    weights = feats.arrays["label_weights"]
    out = [["O"] * len(s.tokens) for s in sentences]
    rows, cols = np.nonzero(weights > 0)
    for r, c in zip(rows, cols, strict=True):
        out[int(feats.sentence_index[r])][int(feats.word_ids[r, c])] = labels[int(pred[r, c])]
    return out
