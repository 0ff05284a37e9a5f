"""The `bertjax` command: every subcommand listed with one line, each the same program as its
`python -m` module, unknown commands refused in one line, and the package builds with the script."""
import os
import subprocess
import sys
import zipfile

from bertjax.__main__ import COMMANDS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_help_lists_every_command_with_one_line():
    r = _run("-m", "bertjax", "--help")
    assert r.returncode == 0
    listed = {ln.split()[0] for ln in r.stdout.splitlines()[2:] if ln.strip()}
    assert listed == set(COMMANDS)
    for name in ("prepare", "train-vocab", "pretrain", "finetune", "plan", "convert", "export",
                 "embed", "fill-mask", "bench", "print-config", "demo"):
        assert name in COMMANDS


def test_subcommand_is_the_module_program_and_unknown_ones_fail_in_one_line():
    args = ["--config=configs/bert_tiny.py", "--config.train.batch_size=8"]
    a = _run("-m", "bertjax", "print-config", *args)
    b = _run("-m", "bertjax.tools.print_config", *args)
    assert a.returncode == 0 and a.stdout == b.stdout and '"batch_size": 8' in a.stdout
    bad = _run("-m", "bertjax", "print-config", "--config=configs/bert_tiny.py",
               "--config.train.batch_size=eight")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    r = _run("-m", "bertjax", "pretrian")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown command" in r.stderr


def test_every_command_module_exists():
    import importlib.util

    for module, _ in COMMANDS.values():
        assert importlib.util.find_spec(module) is not None, module


def test_importing_every_command_together_defines_no_flags():
    """Tests and the Python API import several entrypoints into one process; a flag defined at
    import (CI once failed on `--workdir` from both demo and pretrain) would clash."""
    code = ("import importlib; from absl import app, flags, logging; from bertjax import cli\n"
            "from bertjax.__main__ import COMMANDS\n"
            "for m, _ in COMMANDS.values(): importlib.import_module(m)\n"
            "print(sorted(m for m in flags.FLAGS.flags_by_module_dict() if 'bertjax' in m))")
    r = _run("-c", code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_the_package_builds_with_the_console_script(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "-w", str(tmp_path), REPO],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("bertjax-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "bertjax = bertjax.__main__:main" in entry
    assert "bertjax/train/step.py" in names and "launch/tpu.py" in names
    assert not any(n.startswith(("tests/", "configs/")) for n in names)


def test_python_m_bertjax_plan_is_the_plan_command():
    a = _run("-m", "bertjax.plan", "--config=configs/bert_tiny.py", "--topology=v9z:2x2")
    b = _run("-m", "bertjax", "plan", "--config=configs/bert_tiny.py", "--topology=v9z:2x2")
    assert a.returncode == b.returncode != 0, a.stderr[-2000:]
    assert a.stderr.strip().splitlines()[-1] == b.stderr.strip().splitlines()[-1]
    assert len(a.stderr.strip().splitlines()) == 1 and "v9z" in a.stderr
