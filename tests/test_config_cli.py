"""Every config leaf can be overridden from the command line; bad overrides fail in one line."""
import json
import os
import subprocess
import sys

import pytest

from bertjax.config import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_print_config(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "bertjax.tools.print_config", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=120)


def leaves(cfg, prefix=""):
    for k, v in cfg.items():
        if hasattr(v, "items"):
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v


def other_value(key, v):
    if isinstance(v, bool):
        return (not v), str(not v).lower()
    if isinstance(v, int):
        return v + 3, str(v + 3)
    if isinstance(v, float):
        return v * 0.5 + 0.25, repr(v * 0.5 + 0.25)
    if isinstance(v, str):
        # Values with meaning must stay valid; free-form strings get a new one.
        choices = {"model.hidden_act": "gelu_tanh", "model.attention_backend": "xla",
                   "model.dtype": "bfloat16", "model.param_dtype": "float32", "model.remat": "dots",
                   "optim.name": "adamw", "optim.schedule": "cosine", "data.masking": "dynamic",
                   "model.arch": "roberta", "objective.name": "mlm",
                   "model.pos_att_type": "c2p", "model.norm_rel_ebd": "layer_norm",
                   "objective.embedding_sharing": "gdes", "data.source": "prepared",
                   "data.pair_task": "sop"}
        new = choices.get(key, "/tmp/elsewhere")
        return new, new
    raise AssertionError(f"untyped leaf {key}={v!r}")


def test_every_leaf_overrides():
    cfg = base_config("tiny")
    expected, args = {}, ["--config=configs/bert_tiny.py"]
    for key, v in leaves(cfg):
        new, text = other_value(key, v)
        expected[key] = new
        args.append(f"--config.{key}={text}")
    proc = run_print_config(*args)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for key, want in expected.items():
        node = got
        for part in key.split("."):
            node = node[part]
        assert node == pytest.approx(want), key


@pytest.mark.parametrize("arg,needle", [
    ("--config.model.no_such_key=3", "no_such_key"),
    ("--config.train.batch_size=lots", "batch_size"),
    ("--config.model.num_layers=2.5", "num_layers"),
    ("--config=configs/does_not_exist.py", "does_not_exist"),
    ("--no_such_flag=1", "no_such_flag"),
])
def test_bad_overrides_fail_in_one_line(arg, needle):
    args = [arg] if arg.startswith("--config=") else ["--config=configs/bert_tiny.py", arg]
    proc = run_print_config(*args)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_model_import_does_not_import_tensorflow():
    code = ("import sys, bertjax.model, bertjax.interop.params, bertjax.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tensorflow_text', 'tensorflow_datasets')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("recipe,arg,names", [
    ("bert_tiny.py", "--config.optim.schedule=cosin", ("linear", "cosine", "constant", "rsqrt")),
    ("bert_tiny.py", "--config.model.attention_backend=flash", ("auto", "xla", "cudnn", "splash")),
    ("bert_tiny.py", "--config.model.remat=some", ("none", "full", "dots")),
    ("bert_tiny.py", "--config.optim.name=sgd", ("adamw", "lamb")),
    ("bert_tiny.py", "--config.data.masking=dinamic", ("static", "dynamic")),
    ("glue.py:rte", "--config.task.source=csv", ("auto", "tsv", "tfds")),
])
def test_enum_typo_names_the_choices(recipe, arg, names):
    proc = run_print_config(f"--config=configs/{recipe}", arg)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    key, value = arg.removeprefix("--config.").split("=")
    assert len(lines) == 1 and key in lines[0] and repr(value) in lines[0], proc.stderr
    for n in names:
        assert n in lines[0], lines[0]


def test_enum_typo_stops_pretrain_before_anything_is_built(tmp_path):
    workdir = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "bertjax", "pretrain", "--config=configs/bert_tiny.py",
                           "--config.optim.schedule=cosin", f"--workdir={workdir}"], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "cosine" in proc.stderr
    assert not workdir.exists()


# A run of cli.run whose main leaves one failed, unretrieved asyncio task in an Orbax coroutine
# (what a failed checkpoint save leaves behind, one per array) and one in its own code, then
# fails as the Checkpointer does. The echo of Orbax's failure is logged when the task is
# garbage-collected, which here is forced to come before the error line.
_ECHO_SCRIPT = """
import asyncio, gc
from orbax.checkpoint._src import asyncio_utils
from bertjax import cli
from bertjax.errors import UserError

async def disk_full():
    raise OSError(28, "No space left on device")

async def ours():
    raise ValueError("a failure of our own task")

async def leave_unretrieved():
    asyncio.ensure_future(asyncio_utils.cancellable(disk_full()))
    asyncio.ensure_future(ours())
    await asyncio.sleep(0.05)

def main(argv):
    asyncio.run(leave_unretrieved())
    gc.collect()
    raise UserError("checkpoint save of step 2 failed (disk full)")

cli.run(main)
"""


@pytest.mark.parametrize("verbosity", [None, "0"])
def test_orbax_task_echoes_are_dropped_and_other_tasks_still_logged(verbosity):
    args = [] if verbosity is None else [f"--verbosity={verbosity}"]
    r = subprocess.run([sys.executable, "-c", _ECHO_SCRIPT, *args], cwd=ROOT, capture_output=True,
                       text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and errors == ["error: checkpoint save of step 2 failed (disk full)"]
    assert "a failure of our own task" in r.stderr, r.stderr  # not Orbax's: still logged
    orbax_echo = "No space left on device" in r.stderr
    assert orbax_echo == (verbosity is not None), r.stderr  # --verbosity shows Orbax's again
