"""`python -m bertjax.tools.convert` both ways, through real files, and its one-line failures."""
import json
import os
import subprocess
import sys

import numpy as np
import torch  # pinned (requirements-dev.txt): imported plainly, never skipped
import transformers
from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]


def convert(*args):
    return subprocess.run([sys.executable, "-m", "bertjax.tools.convert", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))


def make_hf(path, arch="BertForSequenceClassification"):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=37,
                                  max_position_embeddings=64, num_labels=3)
    model = getattr(transformers, arch)(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return model


def test_round_trip_through_files(tmp_path):
    make_hf(tmp_path / "hf")
    r = convert(f"--from_hf={tmp_path / 'hf'}", f"--out={tmp_path / 'ckpt'}")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ckpt" / "vocab.txt").exists()
    assert (tmp_path / "ckpt" / "model_config.json").exists()
    r = convert(f"--checkpoint={tmp_path / 'ckpt'}", f"--to_hf={tmp_path / 'back'}")
    assert r.returncode == 0, r.stderr
    a = load_file(str(tmp_path / "hf" / "model.safetensors"))
    b = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (tmp_path / "back" / "vocab.txt").read_text() == (tmp_path / "hf" / "vocab.txt").read_text()
    _, info = transformers.BertForSequenceClassification.from_pretrained(
        str(tmp_path / "back"), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info


def _one_line_failure(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_weight_is_named(tmp_path):
    make_hf(tmp_path / "hf")
    st = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(str(st))
    del tensors["bert.encoder.layer.1.output.dense.weight"]
    save_file(tensors, str(st), metadata={"format": "pt"})
    r = convert(f"--from_hf={tmp_path / 'hf'}", f"--out={tmp_path / 'ckpt'}")
    _one_line_failure(r, "bert.encoder.layer.1.output.dense.weight")
    assert not (tmp_path / "ckpt").exists()


def test_misshaped_weight_is_named(tmp_path):
    make_hf(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    r = convert(f"--from_hf={tmp_path / 'hf'}", f"--out={tmp_path / 'ckpt'}")
    _one_line_failure(r, "intermediate.dense.weight", "shape")


def test_misnamed_weight_is_named(tmp_path):
    make_hf(tmp_path / "hf")
    st = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(str(st))
    tensors["bert.encoder.layer.0.attention.self.qery.weight"] = tensors.pop(
        "bert.encoder.layer.0.attention.self.query.weight")
    save_file(tensors, str(st), metadata={"format": "pt"})
    r = convert(f"--from_hf={tmp_path / 'hf'}", f"--out={tmp_path / 'ckpt'}")
    _one_line_failure(r, "attention.self.query.weight")


def test_pytorch_bin_is_read(tmp_path):
    model = make_hf(tmp_path / "hf", arch="BertForPreTraining")
    os.remove(tmp_path / "hf" / "model.safetensors")
    torch.save(model.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    r = convert(f"--from_hf={tmp_path / 'hf'}", f"--out={tmp_path / 'ckpt'}")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ckpt" / "model_config.json").read_text())["task"] == "pretraining"


def test_no_mode_fails_cleanly():
    _one_line_failure(convert(), "--from_hf")
