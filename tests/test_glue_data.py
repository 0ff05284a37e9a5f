"""GLUE readers on generated files in every public layout, featurisation, TFDS and bad input."""
import logging
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import toy_tasks as toy

from bertjax.data.tasks import features as F
from bertjax.data.tasks import glue
from bertjax.errors import UserError
from bertjax.text.base import Tokenizer



@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return toy.toy_tokenizer(str(tmp_path_factory.mktemp("vocab")))


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_toy_tokenizer_implements_the_protocol(tok):
    assert isinstance(tok, Tokenizer)
    assert tok.tokenize("Alpha unknownish")[:2] == ["alpha", "u"]


@pytest.mark.parametrize("name", list(glue.TASKS))
def test_every_task_layout_reads_and_featurizes(tmp_path, name, tok):
    toy.make_toy_glue_dir(str(tmp_path), name, n_train=12, n_dev=6, n_test=5)
    task = glue.get_task(name)
    for split in task.splits:
        examples = glue.read_tsv(str(tmp_path), name, split)
        test = split in task.submission
        assert len(examples) == (5 if test else 12 if split == "train" else 6)
        for ex in examples:
            assert (ex.label is None) == test
            assert (ex.text_b is not None) == task.is_pair
            if not test and not task.is_regression:
                # The toy data puts the label's signal word in the last text.
                assert toy.SIGNALS[task.labels.index(ex.label)] in (ex.text_b or ex.text_a)
        feats = glue.featurize(examples, tok, task, 24)
        assert feats["input_ids"].shape == (len(examples), 24)
        assert feats["input_ids"].dtype == np.int32
        assert ("labels" in feats) == (not test)
        if not test:
            assert feats["labels"].dtype == (np.float32 if task.is_regression else np.int32)
        ids, seg, mask = feats["input_ids"][0], feats["segment_ids"][0], feats["input_mask"][0]
        n = int(mask.sum())
        assert ids[0] == tok.cls_id and ids[n - 1] == tok.sep_id and (ids[n:] == tok.pad_id).all()
        assert (seg == 1).any() == task.is_pair
        if task.is_pair:
            first_sep = int(np.flatnonzero(ids == tok.sep_id)[0])
            assert (seg[:first_sep + 1] == 0).all() and (seg[first_sep + 1:n] == 1).all()


def test_public_column_layouts(tmp_path):
    # CoLA train has no header; the sentence is the fourth column.
    _write(tmp_path / "CoLA" / "train.tsv",
           ["gj04\t1\t\tThe pond froze solid.", "gj04\t0\t*\tThey drank the pub."])
    cola = glue.read_tsv(str(tmp_path), "CoLA", "train")
    assert [(e.text_a, e.label) for e in cola] == [("The pond froze solid.", "1"),
                                                   ("They drank the pub.", "0")]
    # MNLI dev has five annotator labels before gold_label; quotes are not CSV quoting.
    header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
              "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\t"
              "label4\tlabel5\tgold_label")
    row = ("0\t63735\t63735n\tslate\t( ( a ) )\t( b )\t(ROOT a)\t(ROOT b)\tHe said \"hi.\"\t"
           "Nobody spoke\tneutral\tcontradiction\tcontradiction\tneutral\tneutral\tcontradiction")
    _write(tmp_path / "MNLI" / "dev_mismatched.tsv", [header, row])
    (ex,) = glue.read_tsv(str(tmp_path), "mnli", "dev_mismatched")
    assert (ex.text_a, ex.text_b, ex.label) == ('He said "hi."', "Nobody spoke", "contradiction")
    # QQP test indexes by "id"; MRPC may start with a byte-order mark.
    _write(tmp_path / "QQP" / "test.tsv", ["id\tquestion1\tquestion2", "17\tWhy?\tHow?"])
    (ex,) = glue.read_tsv(str(tmp_path), "qqp", "test")
    assert (ex.index, ex.text_a, ex.text_b, ex.label) == (17, "Why?", "How?", None)
    _write(tmp_path / "MRPC" / "dev.tsv",
           ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t1\t2\tA cat .\tA dog ."])
    (ex,) = glue.read_tsv(str(tmp_path), "mrpc", "dev")
    assert (ex.text_a, ex.text_b, ex.label) == ("A cat .", "A dog .", "1")
    # STS-B labels are floats; a task directory itself also works as data_dir.
    _write(tmp_path / "STS-B" / "dev.tsv",
           ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\t"
            "score", "0\tmain\tMSRvid\t2012\t0001\tnone\tnone\tA plane.\tA jet.\t4.750"])
    (ex,) = glue.read_tsv(str(tmp_path / "STS-B"), "stsb", "dev")
    assert ex.label == 4.75


def test_splits_and_aliases(tmp_path):
    mnli = glue.get_task("MNLI")
    assert glue.resolve_split(mnli, "dev") == "dev_matched"
    assert glue.resolve_split(mnli, "test") == "test_matched"
    assert glue.resolve_split(glue.get_task("rte"), "validation") == "dev"
    assert mnli.dev_splits == ("dev_matched", "dev_mismatched")
    assert glue.get_task("sst_2") is glue.get_task("SST-2")
    with pytest.raises(UserError, match="unknown GLUE task"):
        glue.get_task("squad")
    with pytest.raises(UserError, match="no split 'dev'"):
        glue.resolve_split(glue.get_task("ax"), "dev")


def test_pair_truncation_trims_the_longer_side_first(tok):
    a, b = list(range(10)), list(range(100, 104))
    F.truncate_pair(a, b, 8)
    assert a == [0, 1, 2, 3] and b == [100, 101, 102, 103]
    a, b = [1, 2, 3], [4, 5, 6]
    F.truncate_pair(a, b, 5)
    assert a == [1, 2, 3] and b == [4, 5]  # a tie trims the second text
    long_a = " ".join(["cat"] * 20)
    ex = [glue.GlueExample(0, long_a, "dog runs", "entailment"),
          glue.GlueExample(1, " ".join(["cat"] * 30), None, "1")]
    pair = glue.featurize(ex[:1], tok, "rte", 12)
    ids = pair["input_ids"][0].tolist()
    cat, dog, runs = tok.convert_tokens_to_ids(["cat", "dog", "runs"])
    assert ids == [tok.cls_id] + [cat] * 7 + [tok.sep_id, dog, runs, tok.sep_id]
    single = glue.featurize(ex[1:], tok, "sst2", 12)
    assert single["input_mask"].sum() == 12 and single["input_ids"][0, -1] == tok.sep_id


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(UserError, match=r"RTE/train\.tsv") as e:
        glue.read_tsv(str(tmp_path), "rte", "train")
    assert str(tmp_path) in str(e.value)
    with pytest.raises(UserError, match="not found"):
        glue.read_glue(str(tmp_path), "sst2", "dev", source="auto")


def test_bad_labels_name_file_line_and_label(tmp_path):
    _write(tmp_path / "RTE" / "train.tsv",
           ["index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\tentailment", "1\tA.\tB.\tmaybe"])
    with pytest.raises(UserError, match=r"RTE/train\.tsv:3: label 'maybe'"):
        glue.read_tsv(str(tmp_path), "rte", "train")
    _write(tmp_path / "STS-B" / "train.tsv",
           ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\t"
            "score", "0\tg\tf\ty\to\ts\ts\tA.\tB.\thigh"])
    with pytest.raises(UserError, match=r"train\.tsv:2: label 'high' is not a number"):
        glue.read_tsv(str(tmp_path), "stsb", "train")
    _write(tmp_path / "QNLI" / "dev.tsv", ["index\tsentence1\tsentence2\tlabel"])
    with pytest.raises(UserError, match=r"lacks column\(s\) \['question', 'sentence'\]"):
        glue.read_tsv(str(tmp_path), "qnli", "dev")


def test_short_rows_skipped_only_when_rare(tmp_path, caplog):
    rows = [f"{i}\t{i}\t{i + 1}\tWhy {i}?\tHow?\t0" for i in range(200)]
    rows[50] = "50\t50\t51\tWhy broken?"
    _write(tmp_path / "QQP" / "train.tsv",
           ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"] + rows)
    with caplog.at_level(logging.WARNING):
        examples = glue.read_tsv(str(tmp_path), "qqp", "train")
    assert len(examples) == 199 and "line 52" in caplog.text
    _write(tmp_path / "QQP" / "dev.tsv",
           ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"] + ["1\t2\t3\tonly"] * 5)
    with pytest.raises(UserError, match="5 of 5 rows have fewer than 6"):
        glue.read_tsv(str(tmp_path), "qqp", "dev")


def test_prediction_labels():
    assert glue.prediction_labels("mnli", np.array([[0.1, 2.0, 0.0], [3.0, 0, 0]])) == \
        ["neutral", "entailment"]
    assert glue.prediction_labels("stsb", np.array([[1.5], [2.0]])) == [1.5, 2.0]


def test_tfds_source(tmp_path):
    import tensorflow_datasets as tfds
    with pytest.raises(UserError, match="not readable under"):
        glue.read_tfds(str(tmp_path), "rte", "dev")
    with tfds.testing.mock_data(num_examples=4):
        mnli = glue.read_glue(str(tmp_path), "mnli", "dev_mismatched", source="tfds")
        stsb = glue.read_tfds(str(tmp_path), "stsb", "train")
        qqp = glue.read_tfds(str(tmp_path), "qqp", "test")
    assert len(mnli) == 4 and all(e.label in glue.get_task("mnli").labels for e in mnli)
    assert all(isinstance(e.text_a, str) and isinstance(e.text_b, str) for e in mnli)
    assert all(isinstance(e.label, float) for e in stsb)
    assert all(e.label is None for e in qqp)


def test_task_modules_import_neither_tensorflow_nor_jax():
    # Fine-tuning from TSV/JSON files must not pay for (or be broken by) TensorFlow.
    code = ("import sys\n"
            "import bertjax.data.tasks.glue, bertjax.data.tasks.squad, bertjax.data.tasks.ner\n"
            "import bertjax.evaluate.glue_metrics, bertjax.evaluate.squad_metrics\n"
            "import bertjax.evaluate.conll_metrics, bertjax.evaluate.writers\n"
            "print(sorted(m for m in ('tensorflow', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(pathlib.Path(__file__).parents[1]))
    assert out.stdout.strip() == "[]"


def test_text_classification_task_reads_any_label_names(tmp_path):
    from bertjax.data.tasks import glue as glue_mod

    rows = ["sentence\tlabel", "a small dog\tnoun.animal", "a wooden chair\tnoun.artifact",
            "a red apple\tnoun.food"]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(rows[:2]) + "\n")
    task = glue_mod.text_classification_task(str(tmp_path))
    assert task.labels == ("noun.animal", "noun.artifact", "noun.food")
    (tmp_path / "labels.txt").write_text("noun.food\nnoun.animal\nnoun.artifact\n")
    task = glue_mod.text_classification_task(str(tmp_path))
    assert task.labels == ("noun.food", "noun.animal", "noun.artifact")
    examples = glue_mod.read_glue(str(tmp_path), task, "train", "tsv")
    assert [e.label for e in examples] == ["noun.animal", "noun.artifact", "noun.food"]
    assert [task.label_id(e.label) for e in examples] == [1, 2, 0]
