"""`python -m bertjax.tools.convert --from_tf=DIR` on a checkpoint in the original google-research/bert
layout, written here by TensorFlow from a randomly initialised Hugging Face BertForPreTraining:
every head's logits equal the HF model's, and bad checkpoints fail in one line naming variables."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import tensorflow as tf  # pinned (requirements*.txt): imported plainly, never skipped
import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A cased vocabulary ("Cat" beside "cat") so the casing read off it is False, not the default.
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Cat", "cat"] + [f"w{i}" for i in range(92)]
TOL = 1e-4
# TensorFlow's native start-up log goes to stderr before absl is initialised (and ignores
# TF_CPP_MIN_LOG_LEVEL on this TF); the one-line check reads the other lines.
_TF_NATIVE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl::InitializeLog)")


def _original_name(hf_key):
    """The google-research/bert variable an HF BertForPreTraining tensor corresponds to, from the
    original modeling.py / run_pretraining.py scopes: (name, transpose?) or None (HF-only)."""
    if hf_key.startswith("cls.predictions.decoder") or hf_key.endswith("position_ids"):
        return None  # tied to the word embeddings / a buffer: the original stores neither
    special = {"cls.predictions.bias": "cls/predictions/output_bias",
               "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",
               "cls.seq_relationship.bias": "cls/seq_relationship/output_bias"}
    if hf_key in special:
        return special[hf_key], False  # output_weights is [2, H], used with transpose_b
    scope, leaf = hf_key.rsplit(".", 1)
    scope = re.sub(r"\.layer\.(\d+)\.", r".layer_\1.", scope).replace(".", "/")
    if scope.endswith("_embeddings"):
        return scope, False
    if scope.endswith("LayerNorm"):
        return f"{scope}/{'gamma' if leaf == 'weight' else 'beta'}", False
    return f"{scope}/{'kernel' if leaf == 'weight' else 'bias'}", leaf == "weight"


def _write_tf_dir(path, hf_model, edit=None):
    os.makedirs(path, exist_ok=True)
    variables = {}
    for key, value in hf_model.state_dict().items():
        named = _original_name(key)
        if named is not None:
            v = value.detach().numpy()
            variables[named[0]] = np.ascontiguousarray(v.T if named[1] else v)
    # Training checkpoints carry optimizer slots and the step; they are not weights.
    variables["bert/pooler/dense/kernel/adam_m"] = np.zeros_like(variables["bert/pooler/dense/kernel"])
    variables["global_step"] = np.array(7, np.int64)
    if edit:
        edit(variables)
    names = sorted(variables)
    tf.raw_ops.SaveV2(prefix=os.path.join(path, "bert_model.ckpt"), tensor_names=names,
                      shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(variables[n]) for n in names])
    c = hf_model.config
    with open(os.path.join(path, "bert_config.json"), "w") as f:
        json.dump({"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
                   "hidden_dropout_prob": 0.1, "hidden_size": c.hidden_size,
                   "initializer_range": 0.02, "intermediate_size": c.intermediate_size,
                   "max_position_embeddings": c.max_position_embeddings,
                   "num_attention_heads": c.num_attention_heads,
                   "num_hidden_layers": c.num_hidden_layers, "type_vocab_size": 2,
                   "vocab_size": c.vocab_size}, f)
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    return variables


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=37,
                                  max_position_embeddings=64)
    model = transformers.BertForPreTraining(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # move every weight off its init (LayerNorm 1/0, biases 0)
            p.add_(0.05 * torch.randn_like(p))
    return model


def convert(*args):
    r = subprocess.run([sys.executable, "-m", "bertjax.tools.convert", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"))
    r.stderr = "\n".join(ln for ln in r.stderr.splitlines() if not _TF_NATIVE.match(ln))
    return r


def test_original_checkpoint_matches_hugging_face_on_every_head(tmp_path, hf_model):
    from bertjax.load import model_files

    written = _write_tf_dir(str(tmp_path / "tf"), hf_model)
    assert "bert/encoder/layer_1/attention/self/query/kernel" in written
    assert written["cls/seq_relationship/output_weights"].shape == (2, 32)
    r = convert(f"--from_tf={tmp_path / 'tf'}", f"--out={tmp_path / 'ckpt'}")
    assert r.returncode == 0, r.stderr
    model, cfg, task, _, _ = model_files.load_model(str(tmp_path / "ckpt"))
    assert task == "pretraining" and cfg.num_layers == 2 and cfg.intermediate_size == 37
    identity = json.loads((tmp_path / "ckpt" / "tokenizer_identity.json").read_text())
    assert identity["lower_case"] is False  # read off the cased vocabulary
    assert (tmp_path / "ckpt" / "vocab.txt").read_text() == "\n".join(VOCAB) + "\n"

    rng = np.random.default_rng(0)
    ids = rng.integers(5, len(VOCAB), (3, 12)).astype(np.int32)
    mask = (np.arange(12)[None] < np.array([12, 8, 5])[:, None]).astype(np.int32)
    seg = (np.arange(12)[None] >= np.array([6, 4, 2])[:, None]).astype(np.int32) * mask
    ids = ids * mask
    pos = np.sort(np.stack([rng.choice(n, 4, replace=False) for n in (12, 8, 5)]), 1).astype(np.int32)
    ours = model(ids, seg, mask, pos)
    with torch.no_grad():
        hf = hf_model(input_ids=torch.tensor(ids, dtype=torch.long),
                      token_type_ids=torch.tensor(seg, dtype=torch.long),
                      attention_mask=torch.tensor(mask, dtype=torch.long))
    hf_mlm = np.take_along_axis(hf.prediction_logits.numpy(), pos[..., None].astype(np.int64), 1)
    assert np.max(np.abs(np.asarray(ours["mlm_logits"]) - hf_mlm)) < TOL
    assert np.max(np.abs(np.asarray(ours["nsp_logits"]) - hf.seq_relationship_logits.numpy())) < TOL


def test_unknown_missing_and_misshaped_variables_are_named_in_one_line(tmp_path, hf_model):
    def edit(v):
        v["bert/encoder/layer_0/attention/self/qery/kernel"] = v.pop(
            "bert/encoder/layer_0/attention/self/query/kernel")
        del v["cls/predictions/transform/LayerNorm/beta"]
        v["bert/encoder/layer_1/intermediate/dense/kernel"] = np.zeros((32, 40), np.float32)

    _write_tf_dir(str(tmp_path / "tf"), hf_model, edit)
    r = convert(f"--from_tf={tmp_path / 'tf'}", f"--out={tmp_path / 'ckpt'}")
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    line = lines[0]
    assert "unknown variables bert/encoder/layer_0/attention/self/qery/kernel" in line
    assert "bert/encoder/layer_0/attention/self/query/kernel" in line  # now missing
    assert "cls/predictions/transform/LayerNorm/beta" in line
    assert "bert/encoder/layer_1/intermediate/dense/kernel (32, 40)" in line
    assert "adam_m" not in line and "global_step" not in line
    assert not (tmp_path / "ckpt").exists()
