"""GLUE: the task table, readers for the public TSV distribution and for TFDS `glue/<task>`, and
featurisation into the sequence-classification batch contract.

Label strings are the ones the GLUE server expects back ("0"/"1", "entailment", ...) and are
ordered like the TFDS ClassLabel names, so a TFDS integer label is an index into the same list.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from bertjax.data import corpus
from bertjax.data.tasks import features as F
from bertjax.errors import UserError
from bertjax.text.base import Tokenizer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GlueTask:
    name: str
    dir_name: str
    labels: tuple[str, ...]          # empty for regression (STS-B)
    metrics: tuple[str, ...]
    text_columns: tuple[str, ...]    # TSV header names of text_a (and text_b)
    label_column: str
    index_column: str                # test files carry their own index (QQP calls it "id")
    tfds_name: str
    tfds_text: tuple[str, ...]
    tfds_label_names: tuple[str, ...]
    # split -> (file relative to the task directory, TFDS split name)
    splits: dict[str, tuple[str, str]]
    # split -> GLUE submission file name; these splits are unlabelled
    submission: dict[str, str]
    # CoLA train/dev have no header: (text position, label position)
    headerless: tuple[int, int] | None = None
    dev_splits: tuple[str, ...] = ("dev",)

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.labels)

    @property
    def test_splits(self) -> tuple[str, ...]:
        return tuple(self.submission)

    def label_id(self, label: str) -> int:
        return self.labels.index(label)


_STD = {"train": ("train.tsv", "train"), "dev": ("dev.tsv", "validation"),
        "test": ("test.tsv", "test")}
_BIN = ("0", "1")
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")


def _task(name, dir_name, labels, metrics, text, label, tfds_text, tfds_labels, *,
          index="index", splits=None, submission=None, headerless=None, dev_splits=("dev",)):
    return GlueTask(
        name=name, dir_name=dir_name, labels=labels, metrics=metrics, text_columns=text,
        label_column=label, index_column=index, tfds_name=f"glue/{name}", tfds_text=tfds_text,
        tfds_label_names=tfds_labels, splits=splits or dict(_STD),
        submission=submission or {"test": f"{dir_name}.tsv"}, headerless=headerless,
        dev_splits=dev_splits)


TASKS: dict[str, GlueTask] = {t.name: t for t in [
    _task("cola", "CoLA", _BIN, ("mcc",), ("sentence",), "label", ("sentence",),
          ("unacceptable", "acceptable"), headerless=(3, 1)),
    _task("sst2", "SST-2", _BIN, ("accuracy",), ("sentence",), "label", ("sentence",),
          ("negative", "positive")),
    _task("mrpc", "MRPC", _BIN, ("accuracy", "f1"), ("#1 String", "#2 String"), "Quality",
          ("sentence1", "sentence2"), ("not_equivalent", "equivalent")),
    _task("stsb", "STS-B", (), ("pearson", "spearman"), ("sentence1", "sentence2"), "score",
          ("sentence1", "sentence2"), ()),
    _task("qqp", "QQP", _BIN, ("accuracy", "f1"), ("question1", "question2"), "is_duplicate",
          ("question1", "question2"), ("not_duplicate", "duplicate"), index="id"),
    _task("mnli", "MNLI", _NLI3, ("accuracy",), ("sentence1", "sentence2"), "gold_label",
          ("premise", "hypothesis"), _NLI3,
          splits={"train": ("train.tsv", "train"),
                  "dev_matched": ("dev_matched.tsv", "validation_matched"),
                  "dev_mismatched": ("dev_mismatched.tsv", "validation_mismatched"),
                  "test_matched": ("test_matched.tsv", "test_matched"),
                  "test_mismatched": ("test_mismatched.tsv", "test_mismatched")},
          submission={"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
          dev_splits=("dev_matched", "dev_mismatched")),
    _task("qnli", "QNLI", _NLI2, ("accuracy",), ("question", "sentence"), "label",
          ("question", "sentence"), _NLI2),
    _task("rte", "RTE", _NLI2, ("accuracy",), ("sentence1", "sentence2"), "label",
          ("sentence1", "sentence2"), _NLI2),
    _task("wnli", "WNLI", _BIN, ("accuracy",), ("sentence1", "sentence2"), "label",
          ("sentence1", "sentence2"), ("not_entailment", "entailment")),
    # The diagnostic set is predicted with an MNLI model; only its test file exists.
    _task("ax", "diagnostic", _NLI3, ("accuracy",), ("sentence1", "sentence2"), "label",
          ("premise", "hypothesis"), _NLI3, splits={"test": ("diagnostic.tsv", "test")},
          submission={"test": "AX.tsv"}, dev_splits=()),
]}

def text_classification_task(data_dir: str) -> GlueTask:
    """Any single-sentence classification in the SST-2 layout (DIR/{train,dev}.tsv with a
    `sentence<TAB>label` header) whose label names are listed one per line in DIR/labels.txt, or
    else taken from the training file. The demo's WordNet topics use it."""
    path = os.path.join(data_dir, "labels.txt")
    if os.path.isfile(path):
        labels = tuple(ln.strip() for ln in corpus.iter_lines(path) if ln.strip())
    else:
        rows = _lines(_task_file(data_dir, _task("text", "text", ("0",), (), ("sentence",),
                                                 "label", (), ()), "train"))
        labels = tuple(sorted({r.rsplit("\t", 1)[-1].strip() for r in rows[1:] if "\t" in r}))
    if len(labels) < 2:
        raise UserError(f"{data_dir}: a classification task needs at least 2 labels, found "
                        f"{list(labels)}")
    return _task("text", "text", labels, ("accuracy",), ("sentence",), "label", (), (),
                 submission={})


def get_task(name: str) -> GlueTask:
    """Case-insensitive; "SST-2", "sst_2" and "sst2" all name the same task."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise UserError(f"unknown GLUE task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[key]


def resolve_split(task: GlueTask, split: str) -> str:
    """'dev'/'test' on MNLI mean the matched sets; 'validation' is TFDS's word for dev."""
    split = {"validation": "dev", "eval": "dev"}.get(split, split)
    if split not in task.splits:
        if split in ("dev", "test"):
            matches = [s for s in task.splits if s.startswith(split)]
            if matches:
                return matches[0]
        raise UserError(f"GLUE task {task.name} has no split {split!r}; "
                        f"choose one of {', '.join(task.splits)}")
    return split


@dataclasses.dataclass
class GlueExample:
    index: int | str       # the test file's own index; row number (from 0) for labelled files
    text_a: str
    text_b: str | None
    label: str | float | None   # None on unlabelled (test) splits
    line: int = 0          # 1-based line in the source file, for error messages


def _lines(path: str) -> list[str]:
    # GLUE text contains quote characters that are not CSV quoting, so split on tabs ourselves;
    # corpus.iter_lines ends lines at "\n" only (a stray "\r" inside a sentence does not split
    # it), drops a byte-order mark that would hide the first header name, and names the line and
    # byte of non-UTF-8 input.
    return list(corpus.iter_lines(path))


def _candidates(task: GlueTask, split: str) -> list[str]:
    if task.name == "ax":
        # download_glue_data.py saves AX.tsv as diagnostic/diagnostic.tsv; accept either name.
        return ["diagnostic/diagnostic.tsv", "AX/AX.tsv", "diagnostic.tsv", "AX.tsv"]
    rel = task.splits[split][0]
    return [f"{task.dir_name}/{rel}", rel]


def _task_file(data_dir: str, task: GlueTask, split: str) -> str:
    tried = [os.path.join(data_dir, rel) for rel in _candidates(task, split)]
    for path in tried:
        if os.path.isfile(path):
            return path
    raise UserError(f"GLUE {task.name} {split} file not found (tried {', '.join(tried)}); point "
                    f"data_dir at the GLUE directory holding {_candidates(task, split)[0]}")


def read_tsv(data_dir: str, task: GlueTask | str, split: str) -> list[GlueExample]:
    """Reads one split from the public GLUE TSV layout. data_dir may be the GLUE root (holding
    CoLA/, SST-2/, ...) or the task's own directory."""
    task = get_task(task) if isinstance(task, str) else task
    split = resolve_split(task, split)
    path = _task_file(data_dir, task, split)
    lines = _lines(path)
    labelled = split not in task.submission
    if labelled and task.headerless is not None:
        text_pos, label_pos = task.headerless
        cols, first = [text_pos], 0
        index_pos = None
    else:
        if not lines:
            raise UserError(f"{path} is empty; expected a header line and rows")
        header = lines[0].split("\t")
        wanted = list(task.text_columns)
        if labelled:
            wanted.append(task.label_column)
        elif task.index_column in header:
            wanted.append(task.index_column)
        missing = [c for c in wanted if c not in header]
        if missing:
            raise UserError(f"{path}: header lacks column(s) {missing} expected for GLUE "
                            f"{task.name} {split}; found {header}. Is this the right task/split?")
        cols = [header.index(c) for c in task.text_columns]
        label_pos = header.index(task.label_column) if labelled else None
        index_pos = header.index(task.index_column) if task.index_column in header else None
        first = 1
    need = max(cols + [p for p in (label_pos, index_pos) if p is not None])
    examples, short = [], []
    for lineno, line in enumerate(lines[first:], start=first + 1):
        if not line.strip():
            continue
        row = line.split("\t")
        if len(row) <= need:
            short.append(lineno)
            continue
        label = None
        if labelled:
            label = _parse_label(task, row[label_pos].strip(), path, lineno)
        texts = [row[c] for c in cols]
        index = len(examples)
        if not labelled and index_pos is not None:
            raw = row[index_pos].strip()
            index = int(raw) if raw.isdigit() else raw
        examples.append(GlueExample(index, texts[0], texts[1] if len(texts) > 1 else None,
                                    label, lineno))
    total = len(examples) + len(short)
    # TFDS's GLUE builder also drops rows with missing fields; a few are tolerated here with a
    # warning, many mean a wrong file or layout.
    if short and len(short) > max(1, total // 100):
        raise UserError(f"{path}: {len(short)} of {total} rows have fewer than {need + 1} "
                        f"tab-separated columns (first at line {short[0]}); expected the GLUE "
                        f"{task.name} {split} layout")
    if short:
        log.warning("%s: skipped %d short row(s), first at line %d", path, len(short), short[0])
    return examples


def _parse_label(task: GlueTask, raw: str, path: str, lineno: int):
    if task.is_regression:
        try:
            return float(raw)
        except ValueError:
            raise UserError(f"{path}:{lineno}: label {raw!r} is not a number; GLUE {task.name} "
                            f"expects a similarity score") from None
    if raw not in task.labels:
        raise UserError(f"{path}:{lineno}: label {raw!r} is not one of {list(task.labels)} for "
                        f"GLUE {task.name}; fix the row or choose the right task")
    return raw


def read_tfds(data_dir: str, task: GlueTask | str, split: str) -> list[GlueExample]:
    """Reads an already prepared TFDS `glue/<task>` from data_dir; never downloads."""
    task = get_task(task) if isinstance(task, str) else task
    split = resolve_split(task, split)
    # TensorFlow and TFDS take seconds to import; only the TFDS source of GLUE needs them.
    from bertjax.data.tf_runtime import tf  # noqa: F401  (before TFDS: hides the accelerators)
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(task.tfds_name, data_dir=data_dir)
        ds = builder.as_dataset(split=task.splits[split][1], shuffle_files=False)
    except Exception as e:  # noqa: BLE001 - TFDS raises many types; all mean "not prepared here"
        # TFDS messages run to several sentences; the first names the missing data.
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise UserError(f"TFDS {task.tfds_name} split {task.splits[split][1]} is not readable "
                        f"under {data_dir} ({first}); prepare it there first "
                        f"(tfds build) or use the GLUE TSV files") from None
    if not task.is_regression:
        names = tuple(builder.info.features["label"].names)
        if names != task.tfds_label_names:
            raise UserError(f"TFDS {task.tfds_name} label names {names} differ from the expected "
                            f"{task.tfds_label_names}; this TFDS version is not supported")
    labelled = split not in task.submission
    examples = []
    for n, ex in enumerate(tfds.as_numpy(ds)):
        texts = [_tfds_text(ex[k], task, split, n, k, data_dir) for k in task.tfds_text]
        label = None
        if labelled:
            raw = ex["label"]
            label = float(raw) if task.is_regression else task.labels[int(raw)]
        index = int(ex["idx"]) if "idx" in ex else n
        examples.append(GlueExample(index, texts[0], texts[1] if len(texts) > 1 else None,
                                    label, n + 1))
    return examples


def _tfds_text(raw: bytes, task: GlueTask, split: str, record: int, field: str,
               data_dir: str) -> str:
    # TFDS's GLUE builder stores text it encoded from Python strings, so bad bytes can only come
    # from a dataset built or edited by other means; they still deserve the one-line error, with
    # the record in place of the line.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"TFDS {task.tfds_name} split {task.splits[split][1]} under {data_dir}: "
                        f"record {record} field {field!r} is not UTF-8: byte 0x{raw[e.start]:02x} "
                        f"at byte offset {e.start}; rebuild the dataset from UTF-8 text or use "
                        f"the GLUE TSV files") from None


# Where GLUE examples are read from: the public TSV files, a TFDS data_dir, or "auto" (TSV files
# when present, otherwise TFDS).
SOURCES = ("auto", "tsv", "tfds")


def read_glue(data_dir: str, task: GlueTask | str, split: str,
              source: str = "auto") -> list[GlueExample]:
    """source: one of SOURCES."""
    task = get_task(task) if isinstance(task, str) else task
    if source == "tsv":
        return read_tsv(data_dir, task, split)
    if source == "tfds":
        return read_tfds(data_dir, task, split)
    if source not in SOURCES:
        raise UserError(f"unknown GLUE source {source!r}; use one of {', '.join(SOURCES)}")
    try:
        _task_file(data_dir, task, resolve_split(task, split))
    except UserError:
        if os.path.isdir(os.path.join(data_dir, "glue")):
            return read_tfds(data_dir, task, split)
        raise
    return read_tsv(data_dir, task, split)


def featurize(examples: list[GlueExample], tokenizer: Tokenizer, task: GlueTask | str,
              max_seq_length: int) -> dict[str, np.ndarray]:
    """One feature row per example, in order. `labels` is present only when every example has
    one (test splits have none): int32 class ids, float32 scores for regression."""
    task = get_task(task) if isinstance(task, str) else task
    if max_seq_length < tokenizer.num_special(task.is_pair) + (2 if task.is_pair else 1):
        raise UserError(f"max_seq_length {max_seq_length} is too short for GLUE {task.name}")
    rows = {"input_ids": [], "segment_ids": [], "input_mask": []}
    labels = []
    encoded_a = F.encode_many(tokenizer, [ex.text_a for ex in examples])
    encoded_b = iter(F.encode_many(tokenizer, [ex.text_b for ex in examples
                                               if ex.text_b is not None]))
    for ex, ids_a in zip(examples, encoded_a, strict=True):
        ids_b = next(encoded_b) if ex.text_b is not None else None
        if ids_b is None:
            del ids_a[max_seq_length - tokenizer.num_special(False):]
        else:
            F.truncate_pair(ids_a, ids_b, max_seq_length - tokenizer.num_special(True))
        ids, seg, mask = F.pack(tokenizer, ids_a, ids_b, max_seq_length)
        rows["input_ids"].append(ids)
        rows["segment_ids"].append(seg)
        rows["input_mask"].append(mask)
        if ex.label is not None:
            labels.append(ex.label if task.is_regression else task.label_id(ex.label))
    if examples and len(labels) == len(examples):
        rows["labels"] = labels
    dtypes = {"labels": np.float32 if task.is_regression else np.int32}
    return F.stack(rows, dtypes, max_seq_length)


def prediction_labels(task: GlueTask | str, outputs: np.ndarray) -> list:
    """Model outputs -> GLUE label values: class logits [N, C] -> label strings, regression
    outputs [N] or [N, 1] -> floats."""
    task = get_task(task) if isinstance(task, str) else task
    outputs = np.asarray(outputs)
    if task.is_regression:
        return [float(v) for v in outputs.reshape(len(outputs))]
    return [task.labels[int(i)] for i in outputs.argmax(-1)]
