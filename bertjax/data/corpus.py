"""Document sources for pretraining: every format becomes a stream of documents, each a list of
sentences. Nothing is read whole into memory except one document at a time, and nothing is
downloaded.

Formats
- original: the format of google-research/bert's create_pretraining_data.py: one sentence per line,
  a blank line between documents. A document also ends at the end of each file (the original code
  let a document run on into the next file).
- text: running prose. Lines of a paragraph are joined (hard-wrapped text is fine) and split into
  sentences with blingfire. A document is one paragraph (text up to a blank line) by default, or a
  whole file with doc_unit="file".
- jsonl: one JSON object per line; the text field (text_field, default "text") of each record is one
  document, split into sentences (newlines in it are paragraph breaks).
- tfds: a prepared TensorFlow Datasets dataset read from data_dir (name such as
  "wikipedia/20230601.en", or "tfds:NAME" as the input), one record per document. It must already
  be prepared in data_dir; it is never downloaded.
Files may be gzip- or bzip2-compressed (.gz, .bz2), and local or in a bucket (gs://, see storage.py). "auto" picks jsonl for .jsonl/.json files and
original for everything else, and warns when an "original" file looks like running prose.
"""
from __future__ import annotations

import bz2
import codecs
import contextlib
import glob
import gzip
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence

import blingfire

from bertjax.data import storage
from bertjax.errors import UserError

FORMATS = ("auto", "original", "text", "jsonl", "tfds")
DOC_UNITS = ("paragraph", "file")
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


def expand_inputs(inputs: str | Sequence[str]) -> list[str]:
    """Globs (a comma-separated string or a list; a directory means every file under it) to a
    sorted list of files. Refuses a pattern that matches nothing and an empty file."""
    patterns = [p.strip() for p in inputs.split(",")] if isinstance(inputs, str) else list(inputs)
    patterns = [p for p in patterns if p]
    if not patterns:
        raise UserError("no input files given; pass a file, a directory or a glob ('data/*.txt')")
    files: set[str] = set()
    for pattern in patterns:
        if storage.is_remote(pattern):
            matched = storage.glob_remote(pattern)
        elif os.path.isdir(pattern):
            matched = [p for p in glob.glob(os.path.join(pattern, "**", "*"), recursive=True)
                       if os.path.isfile(p)]
        else:
            matched = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if not matched:
            raise UserError(f"no input files match {pattern!r}; check the path or glob (quote it "
                            "so the shell does not expand it)")
        files.update(matched)
    out = sorted(files)
    for path in out:
        if storage.size(path) == 0:
            raise UserError(f"input file {path} is empty; remove it or fill it with text")
    return out


@contextlib.contextmanager
def _open_binary(path: str):
    # gzip and bz2 leave a file object they were given open: close it here.
    with storage.open_read(path) as raw:
        if path.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                yield f
        elif path.endswith(".bz2"):
            with bz2.BZ2File(raw, "rb") as f:
                yield f
        else:
            yield raw


def not_utf8(path: str, byte: int, offset: int, line: int) -> UserError:
    """The one-line error for bad bytes in a text input, shared by every reader (corpora and the
    fine-tuning files), so users see the same file, line and byte wherever they hit it."""
    return UserError(f"{path} is not UTF-8: byte 0x{byte:02x} at byte offset {offset} "
                     f"(line {line}); convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def iter_lines(path: str) -> Iterator[str]:
    """Lines of a UTF-8 file without their line ends. Splits on "\\n" only, so characters such as
    U+2028 stay inside their line. A leading byte-order mark is dropped. Bad bytes raise UserError
    naming the file, line and byte offset (of the decompressed stream for .gz/.bz2)."""
    offset = 0
    with _open_binary(path) as f:
        for number, raw in enumerate(f, 1):
            start = 0
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                start = len(codecs.BOM_UTF8)
            try:
                line = raw[start:].decode("utf-8")
            except UnicodeDecodeError as e:
                raise not_utf8(path, raw[start + e.start], offset + start + e.start,
                               number) from None
            offset += len(raw)
            yield line.rstrip("\r\n")


def read_text(path: str) -> str:
    """A whole UTF-8 file as one string (a leading byte-order mark dropped), with iter_lines'
    error for bad bytes."""
    with _open_binary(path) as f:
        data = f.read()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        bad = start + e.start
        raise not_utf8(path, data[bad], bad, data.count(b"\n", 0, bad) + 1) from None


# blingfire ends sentences after some abbreviations and initials ("Reynolds v.", "Dr.", "H.");
# a piece ending in one is joined to the next.
_ABBREVIATION_END = re.compile(r"(?:^|\s)(?:[A-Z]|v|vs|Mr|Mrs|Ms|St|Dr|Mt|Ft|No|Nos|cf|Gen|Col|"
                               r"Lt|Capt|Sgt|Rev|Hon|Prof|Jr|Sr|p|pp)\.$")


def split_sentences(text: str) -> list[str]:
    """Sentences of a text. Newlines are paragraph breaks, never inside a sentence: blingfire would
    otherwise join a heading with the sentence after it."""
    out: list[str] = []
    for paragraph in text.split("\n"):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        pending = ""
        for piece in blingfire.text_to_sentences(paragraph).split("\n"):
            piece = piece.strip()
            if not piece:
                continue
            pending = f"{pending} {piece}" if pending else piece
            if not _ABBREVIATION_END.search(pending):
                out.append(pending)
                pending = ""
        if pending:
            out.append(pending)
    return out


def _original_docs(path: str) -> Iterator[list[str]]:
    doc: list[str] = []
    for line in iter_lines(path):
        line = line.strip()
        if line:
            doc.append(line)
        elif doc:
            yield doc
            doc = []
    if doc:
        yield doc


def _text_docs(path: str, doc_unit: str) -> Iterator[list[str]]:
    doc: list[str] = []
    paragraph: list[str] = []
    for line in iter_lines(path):
        if line.strip():
            paragraph.append(line)
            continue
        if paragraph:
            doc.extend(split_sentences(" ".join(paragraph)))
            paragraph = []
        if doc_unit == "paragraph" and doc:
            yield doc
            doc = []
    if paragraph:
        doc.extend(split_sentences(" ".join(paragraph)))
    if doc:
        yield doc


def _jsonl_docs(path: str, text_field: str) -> Iterator[list[str]]:
    for number, line in enumerate(iter_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number} is not valid JSON ({e.msg}); each line of a JSONL "
                            "file must be one JSON object") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number} is a JSON {type(record).__name__}, not an object; "
                            "each line must be an object with a text field")
        if text_field not in record:
            fields = ", ".join(sorted(record)) or "none"
            raise UserError(f"{path}:{number} has no {text_field!r} field (fields: {fields}); pass "
                            "the right one with --text_field")
        text = record[text_field]
        if not isinstance(text, str):
            raise UserError(f"{path}:{number}: field {text_field!r} is a {type(text).__name__}, "
                            "not a string; pass a text field with --text_field")
        sentences = split_sentences(text)
        if sentences:
            yield sentences


def _tfds_docs(name: str, data_dir: str, split: str, text_field: str) -> Iterator[list[str]]:
    # TensorFlow and TFDS take seconds to import and only this source needs them.
    from bertjax.data.tf_runtime import tf  # noqa: F401  (before TFDS: hides the accelerators)
    import tensorflow_datasets as tfds

    where = data_dir or "the default TFDS data_dir"
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except Exception as e:  # tfds raises DatasetNotFoundError and assorted others for bad names
        raise UserError(f"TFDS dataset {name!r} not found in {where} ({type(e).__name__}); "
                        "prepare it there first (bertjax never downloads) or pass --tfds_data_dir"
                        ) from None
    splits = builder.info.splits
    if not splits:
        raise UserError(f"TFDS dataset {name!r} is not prepared in {where}; run its "
                        "download_and_prepare beforehand (bertjax never downloads)")
    base_split = split.split("[")[0]
    if base_split not in splits:
        raise UserError(f"TFDS dataset {name!r} has no split {base_split!r} (splits: "
                        f"{', '.join(sorted(splits))}); pass one with --tfds_split")
    features = builder.info.features
    if text_field not in features:
        raise UserError(f"TFDS dataset {name!r} has no feature {text_field!r} (features: "
                        f"{', '.join(sorted(features))}); pass the text one with --text_field")
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: ex[text_field])
    for index, raw in enumerate(ds.as_numpy_iterator()):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"TFDS dataset {name!r} record {index}: field {text_field!r} is not "
                            f"UTF-8 (byte offset {e.start}); fix or skip the record") from None
        sentences = split_sentences(text)
        if sentences:
            yield sentences


def detect_format(path: str) -> str:
    stem = path[:-3] if path.endswith(".gz") else path[:-4] if path.endswith(".bz2") else path
    return "jsonl" if stem.endswith(_JSON_SUFFIXES) else "original"


def prose_warning(path: str, sample_lines: int = 200) -> str | None:
    """A warning when a file read as "original" (a sentence per line) looks like running text:
    most of its lines hold several sentences."""
    lines = []
    for line in iter_lines(path):
        if line.strip():
            lines.append(line)
            if len(lines) >= sample_lines:
                break
    if len(lines) < 5:
        return None
    several = sum(1 for line in lines if len(split_sentences(line)) > 1)
    if several / len(lines) > 0.5:
        return (f"warning: {path} is read as the original format (one sentence per line) but "
                f"{several} of its first {len(lines)} lines hold several sentences; if it is "
                "running text, pass --format=text")
    return None


def iter_documents(source: str | Sequence[str], fmt: str = "auto", *, text_field: str = "text",
                   doc_unit: str = "paragraph", data_dir: str = "",
                   split: str = "train") -> Iterator[list[str]]:
    """Documents (lists of sentences, none empty) from files or a TFDS dataset, in a fixed order:
    files sorted by name, records in file order. Empty documents are dropped."""
    if fmt not in FORMATS:
        raise UserError(f"unknown corpus format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if doc_unit not in DOC_UNITS:
        raise UserError(f"unknown doc_unit {doc_unit!r}; choose one of {', '.join(DOC_UNITS)}")
    if isinstance(source, str) and source.startswith("tfds:"):
        fmt, source = "tfds", source[len("tfds:"):]
    if fmt == "tfds":
        if not isinstance(source, str) or not source:
            raise UserError("a TFDS source is one dataset name such as 'wikipedia/20230601.en'")
        yield from _tfds_docs(source, data_dir, split, text_field)
        return
    warned = False
    for path in expand_inputs(source):
        kind = detect_format(path) if fmt == "auto" else fmt
        if fmt == "auto" and kind == "original" and not warned:
            message = prose_warning(path)
            if message:
                print(message, file=sys.stderr, flush=True)
                warned = True
        if kind == "original":
            yield from _original_docs(path)
        elif kind == "text":
            yield from _text_docs(path, doc_unit)
        else:
            yield from _jsonl_docs(path, text_field)


def corpus_stats(docs: Iterable[list[str]]) -> dict:
    """Counts over a stream of documents, consuming it once."""
    documents = sentences = characters = single = 0
    smin, smax = None, 0
    for doc in docs:
        n = len(doc)
        documents += 1
        sentences += n
        characters += sum(len(s) for s in doc)
        single += n == 1
        smin = n if smin is None else min(smin, n)
        smax = max(smax, n)
    return {
        "documents": documents,
        "sentences": sentences,
        "characters": characters,
        "sentences_per_document_mean": sentences / documents if documents else 0.0,
        "sentences_per_document_min": smin or 0,
        "sentences_per_document_max": smax,
        "single_sentence_documents": single,
    }


def validate_for_pairs(stats: dict, nsp: bool = True, pair_task: str = "nsp") -> list[str]:
    """Refuses a corpus that cannot make real sentence pairs and warns on one that will make few.

    With nsp, "B follows A" needs documents of several sentences and "B is random" needs another
    document to draw from. Sentence order (pair_task="sop") needs only the first: two consecutive
    segments of one document. Returns the warnings, which are also printed to stderr."""
    documents = stats["documents"]
    if documents == 0:
        raise UserError("the corpus holds no text (0 documents); check the inputs and --format")
    sop = nsp and pair_task == "sop"
    if sop:
        if stats["sentences_per_document_max"] <= 1:
            raise UserError(f"--pair_task=sop: every one of the {documents} documents is a single "
                            "sentence, so no document has two segments to put in order; give "
                            "one sentence per line with a blank line only between documents, or "
                            "use --pair_task=none")
        nsp = False  # the NSP checks below are about random partners, which SOP never draws
    if nsp and documents < 2:
        raise UserError("the corpus is a single document, so a 'random next sentence' would come "
                        "from the same document; add documents (blank line between them) or train "
                        "without next-sentence prediction")
    if nsp and stats["sentences_per_document_max"] <= 1:
        raise UserError(f"every one of the {documents} documents is a single sentence, so no real "
                        "'next sentence' pair exists; the original format wants one sentence per "
                        "line and a blank line only between documents")
    warnings = []
    mean = stats["sentences_per_document_mean"]
    if mean < 2:
        share = stats["single_sentence_documents"] / documents
        warnings.append(
            f"WARNING: documents average only {mean:.2f} sentences ({share:.0%} hold one); is "
            "there a blank line between every sentence? Blank lines separate documents, not "
            "sentences; " + ("one-sentence documents make no sentence-order pair and are dropped"
                             if sop else "most pairs will be random and the next-sentence task "
                             "nearly meaningless"))
    for w in warnings:
        print(w, file=sys.stderr, flush=True)
    return warnings
