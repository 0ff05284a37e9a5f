"""Non-UTF-8 input to every fine-tuning reader (GLUE TSV, TFDS, SQuAD JSON, CoNLL) ends
`python -m bertjax.finetune` with exit 2 and one line naming the file, the line and the byte."""
import json
import os
import re
import subprocess
import sys

import pytest

import toy_tasks as toy
from finetune_support import ROOT, assert_one_line_failure, make_checkpoint, run_cli

BAD = b"caf\xe9"  # Latin-1 "cafe" with an accent: 0xe9 cannot start a UTF-8 sequence here


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("pre")))[0]


def _corrupt(path, line_index):
    """Puts BAD at the start of one line; returns (1-based line, byte offset of 0xe9), both
    counted on the bytes written."""
    lines = open(path, "rb").read().split(b"\n")
    lines[line_index] = BAD + b" " + lines[line_index]
    data = b"\n".join(lines)
    with open(path, "wb") as f:
        f.write(data)
    return line_index + 1, data.index(b"\xe9")


def test_glue_tsv(tmp_path, ckpt):
    data = toy.make_toy_glue_dir(str(tmp_path / "glue"), "sst2", n_train=16, n_dev=8)
    path = os.path.join(data, "SST-2", "train.tsv")
    line, offset = _corrupt(path, 3)
    r = run_cli("--config=configs/glue.py:sst2", f"--config.init_from={ckpt}",
                f"--workdir={tmp_path / 'w'}", f"--config.task.data_dir={data}")
    assert_one_line_failure(r, f"{path} is not UTF-8", "byte 0xe9", f"byte offset {offset}",
                            f"(line {line})")


def test_squad_json(tmp_path, ckpt):
    train = toy.make_toy_squad(str(tmp_path / "train.json"), "1.1", n_paragraphs=2)
    # Pretty-printed so the bad byte sits on a later line than the first.
    payload = json.load(open(train, encoding="utf-8"))
    with open(train, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    line, offset = _corrupt(train, 5)
    r = run_cli("--config=configs/squad.py:v1", f"--config.init_from={ckpt}",
                f"--workdir={tmp_path / 'w'}", f"--config.task.data_dir={tmp_path}",
                "--config.task.train_file=train.json", "--config.task.predict_file=train.json")
    assert line > 1
    assert_one_line_failure(r, f"{train} is not UTF-8", f"byte offset {offset}", f"(line {line})")


def test_conll(tmp_path, ckpt):
    paths = toy.make_toy_conll(str(tmp_path / "ner"), n_train=8, n_dev=4, n_test=4)
    line, offset = _corrupt(paths["dev"], 7)
    r = run_cli("--config=configs/ner.py", f"--config.init_from={ckpt}",
                f"--workdir={tmp_path / 'w'}", f"--config.task.data_dir={tmp_path / 'ner'}")
    assert_one_line_failure(r, f"{paths['dev']} is not UTF-8", f"byte offset {offset}",
                            f"(line {line})")


# TFDS's mock_data only works inside the process that reads the data, so the CLI's main is
# started from a small driver script with the mock in place: a GLUE SST-2 "dataset" whose third
# record holds bad bytes (TFDS's own builder cannot produce them; a hand-built one can).
_TFDS_DRIVER = r"""
import sys
import tensorflow as tf
import tensorflow_datasets as tfds
from bertjax import cli, finetune

def as_dataset(self, split, *args, **kwargs):
    sentences = [b"a fine film", b"dull", b"caf\xe9 scene", b"good"]
    return tf.data.Dataset.from_tensor_slices(
        {"sentence": sentences, "label": [1, 0, 1, 1], "idx": [0, 1, 2, 3]})

sys.argv = ["bertjax.finetune"] + sys.argv[1:]
with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    finetune_main = finetune.main
    cli.run(finetune_main, finetune.define_flags)
"""


# TensorFlow's native start-up log (oneDNN, "could not find cuda drivers", cuInit) goes to stderr
# from C++ before absl is initialised and ignores TF_CPP_MIN_LOG_LEVEL on this TF; it is not our
# output, so the one-line check reads the lines that are not in that log format.
_TF_NATIVE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl::InitializeLog)")


def test_tfds(tmp_path, ckpt):
    driver = tmp_path / "driver.py"
    driver.write_text(_TFDS_DRIVER)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, str(driver), "--config=configs/glue.py:sst2",
                        f"--config.init_from={ckpt}", f"--workdir={tmp_path / 'w'}",
                        f"--config.task.data_dir={tmp_path / 'tfds'}",
                        "--config.task.source=tfds"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    native = [ln for ln in r.stderr.splitlines() if _TF_NATIVE.match(ln)]
    r.stderr = "\n".join(ln for ln in r.stderr.splitlines() if not _TF_NATIVE.match(ln))
    assert all("Traceback" not in ln for ln in native)
    assert_one_line_failure(r, "TFDS glue/sst2", "record 2 field 'sentence' is not UTF-8",
                            "byte 0xe9 at byte offset 3")
