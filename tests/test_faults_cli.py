"""Bad inputs to `python -m bertjax.pretrain` and `python -m bertjax.finetune` (issue 14): each ends
in exit 2 and exactly one `error:` line, and leaves no file in the workdir that a later run could
take for its state. Two cases of each command run as real subprocesses (the process's own exit
status and stderr); the rest run the same entry (`cli.run` with the module's `main`, as its
`__main__` does) in this process, where nearly all of a subprocess's time was its start-up."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import fault_support as fs
import finetune_support as fts
import pretrain_support as ps

pytestmark = pytest.mark.slow


def _start(module, args, cwd=ps.ROOT):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=ps.xla_flags(8))
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _in_process(module, args, capfd) -> tuple[int, str]:
    """`python -m module args` without the process: (exit status, stderr). Every flag the run
    defined (the command's, and the overrides that parsing --config defines) is removed again,
    so the next case, or a later test in this process, defines and parses from scratch."""
    import importlib
    import logging

    from absl import flags
    from absl import logging as absl_logging

    from bertjax import cli

    mod = importlib.import_module(module)
    FLAGS = flags.FLAGS
    # What cli.run installs for a process's lifetime: put back, so no later test sees it.
    saved = (sys.argv, sys.unraisablehook, absl_logging.get_verbosity(),
             {n: logging.getLogger(n).filters[:] for n in ("absl", "asyncio")})
    defined_before = set(FLAGS)
    capfd.readouterr()
    try:
        sys.argv = [module, *args]
        cli.run(mod.main, None if "workdir" in FLAGS else mod.define_flags)
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv, sys.unraisablehook = saved[0], saved[1]
        absl_logging.set_verbosity(saved[2])
        for n, fs_ in saved[3].items():
            logging.getLogger(n).filters[:] = fs_
        FLAGS.unparse_flags()
        for name in set(FLAGS) - defined_before:
            delattr(FLAGS, name)
    return code, capfd.readouterr().err


def _check(n, code, stderr, workdir, needles):
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert code == 2, (n, code, stderr[-3000:])
    assert len(errors) == 1 and "Traceback" not in stderr, (n, stderr[-3000:])
    for needle in needles:
        assert needle in errors[0], (n, needle, errors[0])
    left = fs.workdir_files(workdir) if os.path.isdir(workdir) else []
    assert left == [], (n, left)
    return errors[0]


def _run_all(cases, capfd, subprocesses):
    """cases: {name: (module, args, workdir, needles)} -> {name: error line}; asserts each. The
    cases named in `subprocesses` run as real processes (together), the rest in this one."""
    out = {}
    procs = {n: _start(cases[n][0], cases[n][1]) for n in subprocesses}
    for n, p in procs.items():
        _, stderr = p.communicate(timeout=300)
        out[n] = _check(n, p.returncode, stderr, *cases[n][2:])
    for n in cases:
        if n not in procs:
            out[n] = _check(n, *_in_process(cases[n][0], cases[n][1], capfd), *cases[n][2:])
    return {n: out[n] for n in cases}


def _prepare_variant(root, **kw):
    from bertjax.data import prepare as prep

    os.makedirs(root, exist_ok=True)
    ps.write_corpus(os.path.join(root, "c.txt"))
    vocab = os.path.join(root, "vocab.txt")
    words = kw.pop("extra_words", ())
    ps.write_vocab(vocab)
    if words:
        with open(vocab, "a") as f:
            f.write("\n".join(words) + "\n")
    out = os.path.join(root, "data")
    prep.prepare(prep.Options(input=os.path.join(root, "c.txt"), vocab=vocab, output_dir=out,
                              max_seq_length=kw.get("seq", ps.SEQ),
                              max_predictions_per_seq=ps.PREDS, masking="dynamic",
                              dupe_factor=1, num_workers=1, seed=0))
    return out


def test_pretrain_bad_inputs(tmp_path, capfd):
    data_dir, vocab = ps.prepare(str(tmp_path / "good"))
    t = tmp_path
    (t / "empty").mkdir()
    foreign = t / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not prepared data\n")
    (foreign / "metadata.json").write_text(json.dumps({"format": "tfrecord", "num_examples": 3}))
    old = t / "old_version"
    shutil.copytree(data_dir, old)
    meta = json.loads((old / "metadata.json").read_text())
    meta["format_version"] = 0
    (old / "metadata.json").write_text(json.dumps(meta))
    other_vocab = _prepare_variant(str(t / "other_vocab"), extra_words=("zeta", "eta"))
    # A params-only checkpoint of a wider model (hidden 48) for init_from.
    from bertjax.load import model_files
    from bertjax.model import BertConfig, build_model

    wide = BertConfig(vocab_size=vocab, hidden_size=48, num_layers=2, num_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    model_files.save_checkpoint(str(t / "wide"), build_model("pretraining", wide), wide,
                             "pretraining")

    def case(name, needles, **over):
        wd = str(t / f"wd-{name}")
        args = ps.overrides(data_dir, vocab, **{"train.num_steps": 2, **over})
        return name, ("bertjax.pretrain", ["--config=configs/bert_tiny.py", f"--workdir={wd}",
                                           *args], wd, needles)

    cases = dict([
        case("missing_data", ["does not exist"], **{"data.train_dir": str(t / "nowhere")}),
        case("empty_data", ["has no metadata.json"], **{"data.train_dir": str(t / "empty")}),
        case("foreign_data", ["not bertjax prepared data"], **{"data.train_dir": str(foreign)}),
        case("old_format_version", ["format version 1"], **{"data.train_dir": str(old)}),
        case("seq_len_mismatch", ["max_seq_length=32"], **{"data.max_seq_length": 64}),
        case("P_mismatch", ["max_predictions_per_seq=5"], **{"data.max_predictions_per_seq": 7}),
        case("vocab_size_mismatch", ["model.vocab_size"], **{"model.vocab_size": vocab + 3}),
        case("tokenizer_mismatch", ["tokenizer mismatch"], **{"data.eval_dir": other_vocab}),
        case("init_from_other_shape", ["parameter shapes differ"],
             **{"init_from": str(t / "wide")}),
        case("wrong_override_type", ["train.num_steps"], **{"train.num_steps": "many"}),
    ])
    # Real processes: the deepest failure (a checkpoint read, a model built) and the earliest
    # (flag parsing, before any import of the trainer).
    lines = _run_all(cases, capfd, ("init_from_other_shape", "wrong_override_type"))
    fs.record("cli_pretrain", trials=len(lines), cases=lines,
              injected="bad data dirs, metadata of format version 0, S/P/vocab mismatches, "
              "another tokenizer, an init_from of another width, a string for an int",
              survived="each: exit 2, one error line, no file left in the workdir")


def test_finetune_bad_inputs(tmp_path, capfd):
    import toy_tasks as toy

    path, _ = fts.make_checkpoint(str(tmp_path / "pre"))
    t = tmp_path
    toy.make_toy_glue_dir(str(t / "glue"), "sst2", n_train=32, n_dev=8)
    (t / "empty").mkdir()
    foreign = t / "foreign" / "SST-2"
    foreign.mkdir(parents=True)
    (foreign / "train.tsv").write_text("this\tis\tnot\ta\tglue\tfile\n1\n")
    other = toy.toy_tokenizer(str(t / "other"), extra_words=("zeta",))
    # The same weights under a model_config.json that claims another width.
    bad = t / "bad_shape"
    shutil.copytree(path, bad)
    mc = json.loads((bad / "model_config.json").read_text())
    mc["hidden_size"], mc["intermediate_size"] = 48, 96
    (bad / "model_config.json").write_text(json.dumps(mc))

    def case(name, needles, *extra, init=path, data=str(t / "glue")):
        wd = str(t / f"wd-{name}")
        args = ["--config=configs/glue.py:sst2", f"--config.init_from={init}", f"--workdir={wd}",
                f"--config.task.data_dir={data}", "--config.data.max_seq_length=32",
                "--config.train.batch_size=16", "--config.task.epochs=1", *extra]
        return name, ("bertjax.finetune", args, wd, needles)

    cases = dict([
        case("missing_data", ["train file not found"], data=str(t / "nowhere")),
        case("empty_data", ["train file not found"], data=str(t / "empty")),
        case("foreign_data", ["train.tsv"], data=str(t / "foreign")),
        case("missing_checkpoint", ["does not exist"], init=str(t / "nothing")),
        case("vocab_mismatch", ["tokenizer mismatch"], f"--config.task.vocab={other.vocab_path}"),
        case("checkpoint_other_shape", ["parameter shapes differ"], init=str(bad)),
        case("seq_len_too_long", ["max_seq_length"], "--config.data.max_seq_length=128"),
        case("wrong_override_type", ["task.epochs"], "--config.task.epochs=lots"),
    ])
    lines = _run_all(cases, capfd, ("checkpoint_other_shape", "wrong_override_type"))
    fs.record("cli_finetune", trials=len(lines), cases=lines,
              injected="missing, empty and foreign GLUE dirs, a missing checkpoint, another "
              "vocabulary, a checkpoint whose config claims another width, S past the position "
              "table, a string for a float",
              survived="each: exit 2, one error line, no file left in the workdir")
