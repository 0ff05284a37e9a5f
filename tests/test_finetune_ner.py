"""NER fine-tuning end to end on toy CoNLL files, initialised from a Hugging Face directory, and
one-line failures on bad input."""
import json
import os

import numpy as np
import pytest
from finetune_support import (  # noqa: F401  (compile_cache is an autouse fixture)
    TINY_MODEL,
    assert_one_line_failure,
    compile_cache,
    make_checkpoint,
    recipe,
    run_cli,
    tiny,
)
import toy_tasks as toy

from bertjax.errors import UserError
from bertjax.evaluate import conll_metrics
from bertjax.finetuning import run as ft_run


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A Hugging Face BertForPreTraining directory written by bertjax's own exporter."""
    from bertjax.interop import params as interop
    from bertjax.model import BertConfig, build_model

    root = tmp_path_factory.mktemp("hf")
    tok = toy.toy_tokenizer(str(root / "vocab"))
    cfg = BertConfig(vocab_size=tok.vocab_size, **TINY_MODEL)
    model = build_model("pretraining", cfg, seed=7)
    interop.save_hf(model, cfg, "pretraining", str(root / "model"), extra_files=[tok.vocab_path])
    return str(root / "model"), interop.flat_params(model)


def _ner_cfg(init_from, data_dir, **kw):
    cfg = tiny(recipe("ner"), init_from, **kw)
    cfg.task.data_dir = str(data_dir)
    return cfg


@pytest.mark.slow
def test_ner_from_a_hugging_face_dir_scores_entities_and_writes_conll(tmp_path, hf_dir):
    path, hf_params = hf_dir
    toy.make_toy_conll(str(tmp_path / "data"), n_train=64, n_dev=24, n_test=16)
    cfg = _ner_cfg(path, tmp_path / "data", epochs=10)
    cfg.task.eval_every = 20
    work = tmp_path / "work"
    summary = ft_run.finetune(cfg, str(work))

    # The HF weights became a bertjax checkpoint of the encoder, which the run started from.
    init = work / "init"
    assert json.loads((init / "model_config.json").read_text())["hidden_size"] == 32
    assert (init / "vocab.txt").exists() and (init / "tokenizer_identity.json").exists()
    from bertjax.train import checkpoint as ckpt_lib

    emb = hf_params[("bert", "embeddings", "word_embeddings", "embedding")]
    loaded, report = ckpt_lib.load_params(str(init), {"bert": {"embeddings": {
        "word_embeddings": {"embedding": np.zeros_like(emb)}}}})
    np.testing.assert_array_equal(loaded["bert"]["embeddings"]["word_embeddings"]["embedding"],
                                  emb)

    run = summary["runs"][0]
    dev = run["dev"]
    assert summary["best_metric"] == "f1" and run["best"] == dev["f1"]
    for split in ("", "test/"):
        for k in ("precision", "recall", "f1", "accuracy", "loss"):
            assert np.isfinite(dev[split + k])
    # Capitalised names from short lists: entity F1 well above nothing after a few dozen steps.
    assert dev["f1"] > 30.0, dev
    out = work / "seed-0" / "predictions"
    for split, prefix in (("dev", ""), ("test", "test/")):
        lines = (out / f"{split}_predictions.txt").read_text().splitlines()
        assert all(len(ln.split()) == 3 for ln in lines if ln)
        # The file is conlleval's input; scoring it gives the reported numbers.
        rescored = conll_metrics.evaluate_lines(lines)
        assert rescored.overall.f1 == pytest.approx(dev[prefix + "f1"])
        assert rescored.overall.precision == pytest.approx(dev[prefix + "precision"])
        assert "FB1" in (out / f"{split}_conlleval.txt").read_text()
    labels = json.loads((work / "seed-0" / "best" / "labels.json").read_text())
    assert labels[0] == "O" and {"B-PER", "I-PER", "B-LOC", "B-ORG"} <= set(labels)
    assert json.loads((work / "seed-0" / "best" / "model_config.json").read_text())[
        "num_labels"] == len(labels)


def test_ner_bad_input(tmp_path):
    ckpt, _ = make_checkpoint(str(tmp_path / "pre"))
    data = tmp_path / "data"
    toy.make_toy_conll(str(data), n_train=16, n_dev=4, n_test=4)
    dev = data / "dev.txt"
    lines = dev.read_text().splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.endswith(" O") and "DOCSTART" not in ln)
    lines[at] = lines[at][: -len("O")] + "B-MISC"
    dev.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"dev.txt:{at + 1}: tag 'B-MISC' is not in the label"):
        ft_run.finetune(_ner_cfg(ckpt, data), str(tmp_path / "w1"))

    os.remove(data / "test.txt")
    r = run_cli("--config=configs/ner.py", f"--config.init_from={ckpt}",
                f"--workdir={tmp_path / 'w2'}", f"--config.task.data_dir={data}",
                "--config.task.dev_file=train.txt")
    assert_one_line_failure(r, "NER file not found", "test.txt")


def test_a_pretraining_workdir_gives_the_model_shape_and_vocabulary(tmp_path):
    """The layout bertjax.pretrain leaves: config.json, vocab/, tokenizer_identity.json."""
    from bertjax.config import base_config
    from bertjax.finetuning import init_source

    work = tmp_path / "pretrain"
    tok = toy.toy_tokenizer(str(work / "vocab"))
    pre = base_config("tiny")
    pre.model.vocab_size = tok.vocab_size
    pre.model.num_layers = 3
    (work / "model_config.json").write_text(json.dumps({**pre.model.to_dict(),
                                                        "task": "pretraining"}))
    (work / "tokenizer_identity.json").write_text(json.dumps(tok.identity()))
    cfg = recipe("ner")
    cfg.init_from = str(work)
    source = init_source.resolve(cfg, str(tmp_path / "ft"), log=lambda _: None)
    assert source.vocab_path == str(work / "vocab")
    assert source.model["num_layers"] == 3 and source.model["hidden_size"] == 128
    recipe_model = cfg.model.to_dict()
    model = init_source.model_for(cfg, source, num_labels=5, log=lambda _: None)
    assert (model["num_layers"], model["vocab_size"], model["num_labels"]) == (
        3, tok.vocab_size, 5)
    assert cfg.model.to_dict() == recipe_model  # the run plan takes them; the config stays as given

    (work / "tokenizer_identity.json").write_text(json.dumps({**tok.identity(),
                                                             "lower_case": False}))
    with pytest.raises(UserError, match="tokenizer mismatch .* lower_case False vs True"):
        init_source.resolve(cfg, str(tmp_path / "ft"), log=lambda _: None)
