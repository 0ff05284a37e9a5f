"""bertjax.tools.export: Hugging Face exports of every head load cleanly in transformers and give bertjax's
logits; safetensors and msgpack exports re-load to identical params; incomplete or mismatched
checkpoints are refused and a failed export leaves nothing behind."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hf_support import write_vocab

import torch  # noqa: E402  (pinned in requirements-dev.txt: imported plainly, never skipped)
import transformers  # noqa: E402

from bertjax.tools import export as export_lib  # noqa: E402
from bertjax.errors import UserError  # noqa: E402
from bertjax.interop import params as interop
from bertjax.load import model_files  # noqa: E402
from bertjax.store import workdir  # noqa: E402
from bertjax.model import BertConfig, build_model  # noqa: E402
from bertjax.text import load_tokenizer  # noqa: E402
from bertjax.train import checkpoint as ckpt_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
HF_CLASSES = {
    "pretraining": "BertForPreTraining",
    "base": "BertModel",
    "sequence_classification": "BertForSequenceClassification",
    "token_classification": "BertForTokenClassification",
    "question_answering": "BertForQuestionAnswering",
}
LABELS = ["negative", "neutral", "positive"]


def tiny_cfg():
    return BertConfig(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37,
                      max_position_embeddings=64, num_labels=3)


def random_model(task, seed=1):
    model = build_model(task, tiny_cfg(), seed=seed)
    rng = np.random.default_rng(seed)
    # Fresh init leaves biases and LayerNorm at 0/1: perturb every tensor so each one is checked.
    interop.set_flat_params(model, {k: v + 0.05 * rng.standard_normal(v.shape).astype(v.dtype)
                                    for k, v in interop.flat_params(model).items()})
    return model


def pure_params(model):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    write_vocab(d)
    return d


def save_ckpt(path, model, task, vocab_dir, **config_extra):
    config = {**tiny_cfg().to_dict(), "task": task, **config_extra}
    ckpt_lib.save_params(str(path), pure_params(model), config,
                         extra_files=model_files.tokenizer_extras(str(vocab_dir)))
    return str(path)


@pytest.fixture(scope="module")
def hf_exports(tmp_path_factory, vocab_dir):
    """task -> (bertjax model, path of its HF export), each from a params-only checkpoint."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for i, task in enumerate(HF_CLASSES):
        model = random_model(task, seed=i)
        extra = {"id2label": LABELS} if task == "sequence_classification" else {}
        ckpt = save_ckpt(root / f"{task}-ckpt", model, task, vocab_dir, **extra)
        assert export_lib.export(ckpt, "hf", str(root / task)) == task
        out[task] = (model, str(root / task))
    return out


def make_batch(seed=0, batch=3, seq=12):
    """Rows of different lengths (padding) with two segments each."""
    rng = np.random.default_rng(seed)
    lengths = np.array([seq, seq - 4, 5])[:batch]
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(5, 99, size=(batch, seq)).astype(np.int32) * mask
    seg = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        seg[b, n // 2:n] = 1
    positions = np.sort(np.stack([rng.choice(n, 4, replace=False) for n in lengths]), axis=1)
    return dict(input_ids=ids, segment_ids=seg, input_mask=mask,
                masked_lm_positions=positions.astype(np.int32))


def assert_close(ours, theirs, what, select=None):
    ours, theirs = np.asarray(ours), theirs.detach().numpy()
    if select is not None:
        ours, theirs = ours[select], theirs[select]
    diff = float(np.max(np.abs(ours - theirs)))
    assert diff < TOL, f"{what}: max abs diff {diff}"


@pytest.mark.parametrize("task", list(HF_CLASSES))
def test_hf_export_loads_cleanly_and_matches(task, hf_exports):
    model, path = hf_exports[task]
    hf, info = getattr(transformers, HF_CLASSES[task]).from_pretrained(
        path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf.eval()
    b = make_batch(seed=2)
    t = {k: torch.tensor(v, dtype=torch.long) for k, v in b.items()}
    with torch.no_grad():
        ref = hf(input_ids=t["input_ids"], token_type_ids=t["segment_ids"],
                 attention_mask=t["input_mask"])
    args = (b["input_ids"], b["segment_ids"], b["input_mask"])
    real = b["input_mask"].astype(bool)
    if task == "pretraining":
        out = model(*args, b["masked_lm_positions"])
        gathered = torch.gather(ref.prediction_logits, 1,
                                t["masked_lm_positions"][..., None].expand(-1, -1, 99))
        assert_close(out["mlm_logits"], gathered, "mlm logits")
        assert_close(out["nsp_logits"], ref.seq_relationship_logits, "nsp logits")
    elif task == "base":
        seq, pooled = model(*args)
        assert_close(seq, ref.last_hidden_state, "hidden states", real)
        assert_close(pooled, ref.pooler_output, "pooled")
    elif task == "sequence_classification":
        assert_close(model(*args)["logits"], ref.logits, "logits")
        assert hf.config.id2label == dict(enumerate(LABELS))
    elif task == "token_classification":
        assert_close(model(*args)["logits"], ref.logits, "logits", real)
    else:
        out = model(*args)
        assert_close(out["start_logits"], ref.start_logits, "start logits", real)
        assert_close(out["end_logits"], ref.end_logits, "end logits", real)


def test_hf_export_tokenizer_matches_ours(hf_exports, vocab_dir):
    path = hf_exports["pretraining"][1]
    config = json.loads(open(os.path.join(path, "tokenizer_config.json")).read())
    assert config["do_lower_case"] is True and config["mask_token"] == "[MASK]"
    specials = json.loads(open(os.path.join(path, "special_tokens_map.json")).read())
    assert specials["cls_token"] == "[CLS]" and specials["sep_token"] == "[SEP]"
    hf_tok = transformers.BertTokenizerFast.from_pretrained(path)
    ours = load_tokenizer(str(vocab_dir))
    text = "The Cats sat on the MAT, Café [MASK]!"
    ids = [ours.cls_id, *ours.encode(text), ours.sep_id]
    assert hf_tok(text)["input_ids"] == ids
    assert ours.unk_id not in ids and ours.mask_id in ids


@pytest.mark.parametrize("fmt", ["safetensors", "msgpack"])
def test_own_formats_reload_identical_params(fmt, hf_exports, tmp_path):
    # The source is the HF export of a sequence classifier, so HF directories are covered as input.
    model, hf_path = hf_exports["sequence_classification"]
    out = tmp_path / fmt
    assert export_lib.export(hf_path, fmt, str(out)) == "sequence_classification"
    names = set(os.listdir(out))
    assert {export_lib.PARAMS_FILES[fmt], "model_config.json", "vocab.txt",
            "tokenizer_config.json", workdir.IDENTITY_FILE} <= names, names
    config = json.loads((out / "model_config.json").read_text())
    assert config["task"] == "sequence_classification" and config["hidden_size"] == 32
    assert config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    if fmt == "safetensors":
        from safetensors.numpy import load_file

        keys = set(load_file(str(out / "params.safetensors")))
        assert "bert/encoder/layers/1/attention/qkv/kernel" in keys and "classifier/dense/bias" in keys
    back, cfg, task = export_lib.load_export(str(out))
    assert task == "sequence_classification" and cfg == tiny_cfg()
    want, got = interop.flat_params(model), interop.flat_params(back)
    assert set(want) == set(got)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))
    b = make_batch()
    args = (b["input_ids"], b["segment_ids"], b["input_mask"])
    np.testing.assert_array_equal(back(*args)["logits"], model(*args)["logits"])

    # Tensors the config's model lacks are refused by name, never filled with fresh values.
    (out / "model_config.json").write_text(json.dumps({**config, "task": "question_answering"}))
    with pytest.raises(UserError, match="missing: qa/dense/bias, qa/dense/kernel; unexpected: "
                                        "bert/pooler/dense/bias"):
        export_lib.load_export(str(out))


def test_refuses_unused_weights_and_unsafe_outputs(tmp_path, vocab_dir):
    model = random_model("base")
    extra = {**pure_params(model), "stray": {"kernel": np.zeros((2, 2), np.float32)}}
    ckpt_lib.save_params(str(tmp_path / "ckpt"), extra, {**tiny_cfg().to_dict(), "task": "base"},
                         extra_files=model_files.tokenizer_extras(str(vocab_dir)))
    with pytest.raises(UserError, match="stray"):
        export_lib.export(str(tmp_path / "ckpt"), "hf", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="replace the checkpoint"):
        export_lib.export(str(tmp_path / "ckpt"), "hf", str(tmp_path), overwrite=True)
    with pytest.raises(UserError, match="--format"):
        export_lib.export(str(tmp_path / "ckpt"), "onnx", str(tmp_path / "out"))


def test_failed_export_leaves_old_output_and_no_debris(tmp_path, vocab_dir, monkeypatch):
    ckpt = save_ckpt(tmp_path / "ckpt", random_model("base"), "base", vocab_dir)
    export_lib.export(ckpt, "msgpack", str(tmp_path / "out"))
    before = (tmp_path / "out" / "params.msgpack").read_bytes()
    with pytest.raises(UserError, match="already exists"):
        export_lib.export(ckpt, "msgpack", str(tmp_path / "out"))

    def crash(fmt, model, task, path):
        open(path, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(export_lib, "_write_params", crash)
    for out in ("out", "new"):
        with pytest.raises(OSError, match="disk full"):
            export_lib.export(ckpt, "safetensors", str(tmp_path / out), overwrite=True)
    assert (tmp_path / "out" / "params.msgpack").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "out"]
    monkeypatch.undo()
    export_lib.export(ckpt, "safetensors", str(tmp_path / "out"), overwrite=True)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        ["params.safetensors", "model_config.json", "vocab.txt", "tokenizer_config.json",
         workdir.IDENTITY_FILE])


def run_export(*args):
    return subprocess.run([sys.executable, "-m", "bertjax.tools.export", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"))


def test_training_workdir_exports_its_latest_step(tmp_path, vocab_dir):
    """A run's workdir exports with the vocabulary passed by --vocab (runs keep none beside the
    checkpoints); the HF result holds exactly the params of the latest committed step."""
    model = random_model("token_classification", seed=7)
    # What the loop saves with each step: the user's config and the run plan (store/workdir.py).
    run_cfg = {"config": {}, "plan": {"model": tiny_cfg().to_dict(),
                                      "task_model": "token_classification"}}
    state = {"step": np.int32(5), "params": pure_params(model), "opt_state": {"count": np.int32(5)}}
    with ckpt_lib.Checkpointer(tmp_path / "run", async_=False) as ck:
        ck.save(5, state, {"position": 0}, run_cfg)
    with pytest.raises(UserError, match="--vocab"):
        export_lib.export(str(tmp_path / "run"), "hf", str(tmp_path / "hf"))
    task = export_lib.export(str(tmp_path / "run"), "hf", str(tmp_path / "hf"),
                             vocab=str(vocab_dir / "vocab.txt"))
    assert task == "token_classification"
    from safetensors.numpy import load_file

    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    want = interop.to_hf_tensors(model, tiny_cfg(), "token_classification")
    assert set(tensors) == set(want)
    for k in want:
        np.testing.assert_array_equal(tensors[k], want[k], err_msg=k)
    assert (tmp_path / "hf" / "vocab.txt").read_text() == (vocab_dir / "vocab.txt").read_text()


def test_refuses_a_checkpoint_without_its_head(tmp_path, vocab_dir):
    params = pure_params(random_model("sequence_classification"))
    del params["classifier"]
    ckpt_lib.save_params(str(tmp_path / "ckpt"), params,
                         {**tiny_cfg().to_dict(), "task": "sequence_classification"},
                         extra_files=model_files.tokenizer_extras(str(vocab_dir)))
    with pytest.raises(UserError, match="classifier/dense/kernel"):
        export_lib.export(str(tmp_path / "ckpt"), "hf", str(tmp_path / "hf"))
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_cli_fails_in_one_line(tmp_path):
    """Through the real command line (flags, entrypoint, error wrapper): one line, exit 2."""
    (tmp_path / "out").mkdir()
    r = run_export(f"--checkpoint={tmp_path}", "--format=msgpack", f"--out={tmp_path / 'out'}")
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "already exists" in lines[0] and "--overwrite" in lines[0], r.stderr
