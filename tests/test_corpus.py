"""Corpus sources (original, text, JSONL, TFDS, compressed), statistics, pair validation, and the
demo corpus built from gensim's test data."""
import bz2
import gzip
import json
import os

import pytest

from bertjax.data.corpus import (corpus_stats, expand_inputs, iter_documents, split_sentences,
                                 validate_for_pairs)
from bertjax.errors import UserError


def _write(path, data):
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


ORIGINAL = ("First sentence of doc one.\nSecond sentence of doc one.\n\n\n"
            "  Doc two, only line, padded.  \n \t \n"
            "Doc three starts.\r\nDoc three ends.\r\n")


def test_original_format(tmp_path):
    a = _write(tmp_path / "a.txt", "\ufeff" + ORIGINAL)  # a byte-order mark is not text
    b = _write(tmp_path / "b.txt", "Last doc of b, no trailing blank line.")
    docs = list(iter_documents([b, a], "original"))
    assert docs == [
        ["First sentence of doc one.", "Second sentence of doc one."],
        ["Doc two, only line, padded."],
        ["Doc three starts.", "Doc three ends."],
        # A document ends with its file even without a blank line (b.txt sorts after a.txt).
        ["Last doc of b, no trailing blank line."],
    ]


def test_text_format_paragraphs_and_files(tmp_path):
    text = ("Dr. Smith arrived late. The meeting had\nalready started!\n\n"
            "A second paragraph. It has two sentences.\n")
    path = _write(tmp_path / "prose.txt", text)
    by_paragraph = list(iter_documents(path, "text"))
    assert by_paragraph == [["Dr. Smith arrived late.", "The meeting had already started!"],
                            ["A second paragraph.", "It has two sentences."]]
    by_file = list(iter_documents(path, "text", doc_unit="file"))
    assert by_file == [by_paragraph[0] + by_paragraph[1]]


def test_split_sentences():
    assert split_sentences("The case Reynolds v. United States was decided. Mr. Smith left.\n"
                           "A heading\nThe next paragraph.") == [
        "The case Reynolds v. United States was decided.", "Mr. Smith left.", "A heading",
        "The next paragraph."]
    assert split_sentences(" \n\n ") == []


def test_jsonl_format_and_errors(tmp_path):
    records = [{"text": "One. Two.\nThree.", "id": 1}, {"text": "   "}, {"body": "Four. Five."}]
    path = _write(tmp_path / "c.jsonl", "\n".join(json.dumps(r) for r in records[:2]) + "\n\n")
    assert list(iter_documents(path)) == [["One.", "Two.", "Three."]]  # auto: .jsonl
    other = _write(tmp_path / "d.jsonl", json.dumps(records[2]) + "\n")
    assert list(iter_documents(other, text_field="body")) == [["Four.", "Five."]]
    with pytest.raises(UserError, match=r"d.jsonl:1 has no 'text' field \(fields: body\)"):
        list(iter_documents(other))
    bad = _write(tmp_path / "e.jsonl", '{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(UserError, match=r"e.jsonl:2 is not valid JSON"):
        list(iter_documents(bad))
    wrong = _write(tmp_path / "f.jsonl", '["a list"]\n')
    with pytest.raises(UserError, match="not an object"):
        list(iter_documents(wrong))
    number = _write(tmp_path / "g.jsonl", '{"text": 5}\n')
    with pytest.raises(UserError, match="is a int, not a string"):
        list(iter_documents(number))


def test_compressed_inputs(tmp_path):
    gz = str(tmp_path / "x.txt.gz")
    with gzip.open(gz, "wb") as f:
        f.write(ORIGINAL.encode())
    bz = str(tmp_path / "y.jsonl.bz2")
    with bz2.open(bz, "wb") as f:
        f.write(b'{"text": "Alpha one. Alpha two."}\n')
    assert len(list(iter_documents(gz))) == 3
    assert list(iter_documents(bz)) == [["Alpha one.", "Alpha two."]]


def test_expand_inputs(tmp_path):
    for name in ("b.txt", "a.txt", "sub/c.txt"):
        _write(tmp_path / name, "x\n")
    files = expand_inputs(f"{tmp_path}/*.txt,{tmp_path}/a.txt")
    assert files == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    assert expand_inputs([str(tmp_path)]) == sorted(
        [str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), str(tmp_path / "sub" / "c.txt")])
    with pytest.raises(UserError, match="no input files match"):
        expand_inputs(f"{tmp_path}/*.md")
    with pytest.raises(UserError, match="no input files given"):
        expand_inputs(" , ")
    _write(tmp_path / "empty.txt", b"")
    with pytest.raises(UserError, match="empty.txt is empty"):
        expand_inputs(f"{tmp_path}/*.txt")


def test_non_utf8_names_file_and_byte_offset(tmp_path):
    data = "Good line.\nAnother good one.\n".encode() + b"caf\xe9 au lait\n"
    path = _write(tmp_path / "latin.txt", data)
    with pytest.raises(UserError) as e:
        list(iter_documents(path, "original"))
    msg = str(e.value)
    assert path in msg and "byte 0xe9 at byte offset 32 (line 3)" in msg and "\n" not in msg
    # The offset counts from the file start, a byte-order mark included.
    bom = _write(tmp_path / "bom.txt", b"\xef\xbb\xbfok\n\xff\n")
    with pytest.raises(UserError, match="byte 0xff at byte offset 6 "):
        list(iter_documents(bom, "text"))


def test_auto_format_warns_on_running_text(tmp_path, capsys):
    prose = "\n".join(f"Sentence {i} is here. Another follows it. And a third." for i in range(10))
    path = _write(tmp_path / "prose.txt", prose + "\n")
    docs = list(iter_documents(path))
    assert len(docs) == 1 and len(docs[0]) == 10
    assert "pass --format=text" in capsys.readouterr().err
    list(iter_documents(path, "original"))  # an explicit format is trusted
    assert capsys.readouterr().err == ""


def test_corpus_stats():
    docs = [["a b", "c"], ["d"], ["e", "f", "ghi"]]
    assert corpus_stats(iter(docs)) == {
        "documents": 3, "sentences": 6, "characters": 10,
        "sentences_per_document_mean": 2.0, "sentences_per_document_min": 1,
        "sentences_per_document_max": 3, "single_sentence_documents": 1}
    assert corpus_stats([])["documents"] == 0


def test_validate_for_pairs(capsys):
    good = corpus_stats([["a", "b"], ["c", "d", "e"]])
    assert validate_for_pairs(good) == []
    assert capsys.readouterr().err == ""
    with pytest.raises(UserError, match="holds no text"):
        validate_for_pairs(corpus_stats([]), nsp=False)
    one_doc = corpus_stats([["a", "b", "c"]])
    with pytest.raises(UserError, match="single document"):
        validate_for_pairs(one_doc)
    assert validate_for_pairs(one_doc, nsp=False) == []
    # The "blank line between every sentence" mistake: every line its own document.
    lines = corpus_stats([[s] for s in "abcdef"])
    with pytest.raises(UserError, match="single sentence"):
        validate_for_pairs(lines)
    warnings = validate_for_pairs(lines, nsp=False)
    assert len(warnings) == 1 and "blank line between every sentence" in capsys.readouterr().err
    mostly_single = corpus_stats([["a"], ["b"], ["c"], ["d", "e"]])
    assert len(validate_for_pairs(mostly_single)) == 1
    assert "75% hold one" in capsys.readouterr().err


def test_unknown_options_are_refused(tmp_path):
    path = _write(tmp_path / "a.txt", "x\n")
    with pytest.raises(UserError, match="unknown corpus format 'xml'"):
        list(iter_documents(path, "xml"))
    with pytest.raises(UserError, match="unknown doc_unit"):
        list(iter_documents(path, "text", doc_unit="chapter"))


@pytest.mark.slow
def test_tfds_source(tmp_path):
    """A TFDS dataset prepared locally is read by name from data_dir, without its builder class
    being importable (as for any dataset prepared elsewhere), and nothing is downloaded."""
    import tensorflow_datasets as tfds

    class TinyArticles(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"title": tfds.features.Text(), "text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield 0, {"title": "A", "text": "First article. It has two sentences.\n\nAnd more."}
            yield 1, {"title": "B", "text": ""}
            yield 2, {"title": "C", "text": "Second article here."}

    data_dir = str(tmp_path / "tfds")
    TinyArticles(data_dir=data_dir).download_and_prepare()
    docs = list(iter_documents("tfds:tiny_articles", data_dir=data_dir))
    assert docs == [["First article.", "It has two sentences.", "And more."],
                    ["Second article here."]]
    assert list(iter_documents("tiny_articles", "tfds", data_dir=data_dir, text_field="title")) == [
        ["A"], ["B"], ["C"]]
    with pytest.raises(UserError, match="not found"):
        list(iter_documents("tfds:no_such_dataset_here", data_dir=data_dir))
    with pytest.raises(UserError, match="no split 'validation'"):
        list(iter_documents("tfds:tiny_articles", data_dir=data_dir, split="validation"))
    with pytest.raises(UserError, match=r"no feature 'body' \(features: text, title\)"):
        list(iter_documents("tfds:tiny_articles", data_dir=data_dir, text_field="body"))


def test_demo_corpus(tmp_path):
    from bertjax.demo.corpus import build_demo_corpus

    out = str(tmp_path / "demo")
    m = build_demo_corpus(out, shards=2, heldout_every=5, max_articles=20)
    assert m["wiki"]["shards"] == 2 and m["heldout"]["documents"] == 4
    assert m["wiki"]["documents"] == 16
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f) == m
    shards = sorted(os.path.join(out, p) for p in m["wiki"]["files"])
    assert [os.path.basename(p) for p in shards] == ["wiki-00000.txt", "wiki-00001.txt"]
    stats = corpus_stats(iter_documents(shards, "original"))
    assert stats["documents"] == m["wiki"]["documents"]
    assert stats["sentences"] == m["wiki"]["sentences"]
    assert stats["sentences_per_document_min"] >= 2
    validate_for_pairs(stats)
    text = "".join(open(p, encoding="utf-8").read() for p in shards)
    for markup in ("[[", "]]", "{{", "}}", "'''", "<ref", "==", ".jpg|", "thumb|"):
        assert markup not in text, markup
    held = list(iter_documents(os.path.join(out, "heldout", "*.txt")))
    assert len(held) == 4 and not set(map(tuple, held)) & set(
        map(tuple, iter_documents(shards, "original")))

    rows = {}
    for split in ("train", "dev"):
        with open(os.path.join(out, "polarity", f"{split}.tsv"), encoding="utf-8") as f:
            lines = f.read().splitlines()
        assert lines[0] == "sentence\tlabel"
        rows[split] = [line.split("\t") for line in lines[1:]]
        assert all(len(r) == 2 and r[0] and r[1] in ("0", "1") for r in rows[split])
    assert (len(rows["train"]), len(rows["dev"])) == (160, 40)
    assert sorted(r[1] for r in rows["dev"]) == ["0"] * 20 + ["1"] * 20
    assert not {r[0] for r in rows["train"]} & {r[0] for r in rows["dev"]}
    assert any("—" in r[0] for r in rows["train"] + rows["dev"])  # Windows-1252 dash decoded
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
