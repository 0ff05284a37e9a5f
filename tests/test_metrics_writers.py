"""The metric writers (stdout, JSONL, TensorBoard, PNG), process-0-only writing,
FLOPs per token and MFU, and that none of bertjax.train loads TensorFlow."""
import json
import os
import subprocess
import sys

import pytest

from bertjax.config import model_config
from bertjax.train import flops, metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bert_base_flops_per_token_matches_reference():
    # reference.md: BERT-Base at T=128 with P=20 is ~545 MFLOP per token.
    f = flops.model_flops_per_token(model_config("base"), seq_len=128, num_predictions=20)
    assert f == pytest.approx(545e6, rel=0.005)
    # The MLM head on all 128 positions instead of the 20 gathered ones.
    full = flops.model_flops_per_token(model_config("base"), seq_len=128)
    assert full - f == pytest.approx(6 * (768**2 + 768 * 30522) * (1 - 20 / 128))


def test_peak_table_and_mfu():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert flops.peak_flops("NVIDIA H200") == 989e12
    assert flops.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.peak_flops("TPU v4") == 275e12
    assert flops.peak_flops("TPU v5 lite") == 197e12
    assert flops.peak_flops("TPU v5p") == 459e12
    assert flops.peak_flops("cpu") is None
    assert flops.mfu(1000.0, 1e9, 2, "TPU v4") == pytest.approx(1e12 / 550e12)
    assert flops.mfu(1000.0, 1e9, 8, "cpu") is None


def test_stdout_line_has_eta_after_the_first_write(capsys):
    out = metrics.StdoutWriter(num_steps=1000)
    out.write_scalars(10, {"loss": 7.25})
    out.write_scalars(20, {"loss": 6.5})
    first, second = capsys.readouterr().out.strip().splitlines()
    assert first == "step 10/1000 | loss 7.25"
    assert second.startswith("step 20/1000 | loss 6.5 | ") and " steps/s | eta " in second


def test_tensorboard_events_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with metrics.make_writers(tmp_path, num_steps=3, stdout=False) as w:
        for step, loss in [(1, 5.0), (2, 4.5), (3, 4.25)]:
            w.write_scalars(step, {"train/loss": loss, "train/lr": step * 1e-4})
        w.write_text("config", "model: tiny")
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["train/loss", "train/lr"]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3] and [e.value for e in loss] == [5.0, 4.5, 4.25]
    assert acc.Scalars("train/lr")[2].value == pytest.approx(3e-4)
    assert "config" in acc.Tags()["tensors"]


def test_only_process_zero_writes(tmp_path):
    w = metrics.make_writers(tmp_path / "run", num_steps=10, process_index=1)
    w.write_scalars(1, {"loss": 1.0})
    w.close()
    assert not (tmp_path / "run").exists()
    assert len(metrics.make_writers(tmp_path / "run0", num_steps=10, process_index=0).writers) == 3


def test_jsonl_keeps_the_last_line_per_step_and_plots(tmp_path):
    jl = metrics.JsonlWriter(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3):
        jl.write_scalars(step, {"loss": 10.0 - step, "acc": step / 10})
    jl.write_scalars(2, {"loss": 0.5})  # a resumed run replays step 2
    jl.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss"')  # cut short by a kill
    series = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    assert series["loss"][0].tolist() == [1, 2, 3] and series["loss"][1].tolist() == [9.0, 0.5, 7.0]
    assert all(json.loads(line)["time"] > 0 for line in (tmp_path / "metrics.jsonl").read_text().splitlines()[:4])
    png = metrics.plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.jsonl"]
    assert metrics.plot_curves(tmp_path / "metrics.jsonl", tmp_path / "none.png", keys=["x"]) is None


def test_train_package_does_not_load_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "from bertjax.train import checkpoint, distributed, flops, mesh, metrics, optim\n"
        f"w = metrics.make_writers({str(tmp_path)!r}, 5, stdout=False)\n"
        "w.write_scalars(1, {'loss': 1.0}); w.write_text('config', 'x'); w.close()\n"
        f"metrics.plot_curves({str(tmp_path / 'metrics.jsonl')!r}, {str(tmp_path / 'c.png')!r})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
