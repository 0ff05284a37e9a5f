"""The family house (issue 24): the objective registry and the frozen part of the state, the arch
axis over one encoder, old checkpoints, and the bad inputs of the family ending in one line."""
import dataclasses
import json
import os
import re

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from cli_support import one_line, run_cli
from bertjax.errors import UserError
from bertjax.interop import params as interop
from bertjax.load import model_files
from bertjax.model import BertConfig, archs, build_model
from bertjax.train import checkpoint as ckpt_lib
from bertjax.train import mesh as mesh_lib
from bertjax.train import objectives
from bertjax.train.step import make_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = BertConfig(vocab_size=99, hidden_size=48, num_layers=2, num_heads=3, intermediate_size=37,
                  max_position_embeddings=64, num_labels=3, hidden_dropout=0.0,
                  attention_dropout=0.0)
# The model_config.json keys the code wrote before the arch axis existed (the commit before
# issue 24), written out here so the test does not take them from the code under test.
OLD_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size", "hidden_dropout", "attention_dropout",
            "layer_norm_eps", "initializer_range", "hidden_act", "attention_backend", "dtype",
            "param_dtype", "remat", "scan_layers", "num_labels")
OLD_TREE = {  # per-layer parameter paths of a BERT encoder layer before issue 24
    "attention/qkv/kernel", "attention/qkv/bias", "attention/out/kernel", "attention/out/bias",
    "attention_layer_norm/norm/scale", "attention_layer_norm/norm/bias", "intermediate/kernel",
    "intermediate/bias", "output/kernel", "output/bias", "output_layer_norm/norm/scale",
    "output_layer_norm/norm/bias"}


# --------------------------------------------------------------------------- objectives


def test_no_objective_is_named_by_the_loop_plan_bench_aot_or_hooks():
    names = {cls.__name__ for cls in objectives.OBJECTIVES.values()}
    assert {"Pretraining", "MaskedLM", "Classification", "SpanQA"} <= names
    for rel in ("train/loop.py", "train/hooks.py", "train/aot.py", "tools/plan.py",
                "bench/step.py"):
        text = open(os.path.join(ROOT, "bertjax", rel)).read()
        found = sorted(n for n in names if re.search(rf"\b{n}\b", text))
        assert not found, (rel, found)


def test_each_objective_declares_what_the_house_needs():
    from bertjax.model import TASK_MODELS

    for name, cls in objectives.OBJECTIVES.items():
        obj = cls()
        assert obj.name == name and obj.model_task in TASK_MODELS, name
        spec = obj.batch_spec(4, 16, 3)
        assert spec and all(len(shape) and shape[0] == 4 for shape, _ in spec.values()), name
        assert obj.metrics[0] == "loss" and isinstance(obj.summable, bool), name
    for name in ("mlm_nsp", "mlm", "classification", "regression", "token_classification",
                 "span_qa"):  # the encoder's three inputs, plus what the loss reads
        assert {"input_ids", "segment_ids", "input_mask"} <= set(
            objectives.make(name).batch_spec(4, 16, 3)), name
    assert objectives.make("mlm").model_task == "masked_lm"
    assert "next_sentence_labels" not in objectives.make("mlm").batch_spec(2, 8, 2)
    with pytest.raises(UserError, match="objective.name='rtd' is not one of"):
        objectives.make("rtd")


@dataclasses.dataclass(frozen=True)
class _HeadOnly(objectives.Classification):
    """Trains only the classifier: the encoder sits in the frozen part."""

    trainable = nnx.All(nnx.Param, nnx.PathContains("classifier"))


@dataclasses.dataclass(frozen=True)
class _Coupled(objectives.Classification):
    summable = False


def _batch(n=8, seq=12):
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(5, 99, (n, seq)).astype(np.int32),
            "segment_ids": np.zeros((n, seq), np.int32),
            "input_mask": np.ones((n, seq), np.int32),
            "labels": rng.integers(0, 3, (n,)).astype(np.int32)}


def test_frozen_parameters_get_no_gradient_and_no_optimizer_state():
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    steps = make_steps(lambda: build_model("sequence_classification", TINY), _HeadOnly(),
                       optax.adam(1e-2), mesh)
    state = steps.init()
    trained = jax.tree.leaves(state["params"])
    frozen_before = jax.device_get(state["frozen"])
    assert len(trained) == 2  # the classifier's kernel and bias
    # Adam holds two moments per trained leaf and nothing for the frozen encoder.
    n_trained = sum(x.size for x in trained)
    n_opt = sum(x.size for x in jax.tree.leaves(state["opt_state"]) if x.ndim)
    assert n_opt == 2 * n_trained
    params_before = jax.device_get(state["params"])
    batch = mesh_lib.make_global_batch(_batch(), mesh)
    state, m = steps.train(state, batch, jax.random.key(0))
    assert int(m["nonfinite"]) == 0
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["frozen"]), frozen_before)
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                         jax.device_get(state["params"]), params_before)
    assert min(jax.tree.leaves(moved)) > 0
    # Eval and predict see the whole model, frozen part included.
    sums = steps.eval({"params": state["params"], "frozen": state["frozen"]}, batch)
    assert float(sums["loss"][1]) == 8


def test_an_objective_that_cannot_be_summed_refuses_accumulation_and_a_wrong_model():
    from bertjax.config import finetune_config
    from bertjax.train import aot
    from bertjax.train.run_plan import RunPlan

    cfg = finetune_config("tiny")
    cfg.train.grad_accum_steps = 2
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    model_fn = lambda: build_model("sequence_classification", TINY)  # noqa: E731
    plan = RunPlan.from_config(cfg)
    with pytest.raises(UserError, match="cannot be summed over micro-batches"):
        aot.build_steps(cfg, plan, _Coupled(), model_fn, mesh)
    cfg.train.grad_accum_steps = 1
    with pytest.raises(UserError, match="trains a masked_lm model but the run builds a "
                                        "sequence_classification model"):
        aot.build_steps(cfg, plan, objectives.make("mlm"), model_fn, mesh)


# --------------------------------------------------------------------------- the arch axis


def _paths(model):
    return {"/".join(map(str, k)) for k in interop.flat_params(model)}


def test_default_knobs_build_the_tree_they_always_built():
    paths = _paths(build_model("pretraining", TINY))
    layer = {p.split("/", 4)[4] for p in paths if p.startswith("bert/encoder/layers/0/")}
    assert layer == OLD_TREE
    assert {p for p in paths if "/encoder/" not in p} == {
        "bert/embeddings/word_embeddings/embedding", "bert/embeddings/position_embeddings/embedding",
        "bert/embeddings/token_type_embeddings/embedding", "bert/embeddings/layer_norm/norm/scale",
        "bert/embeddings/layer_norm/norm/bias", "bert/pooler/dense/kernel",
        "bert/pooler/dense/bias", "mlm/transform/kernel", "mlm/transform/bias",
        "mlm/layer_norm/norm/scale", "mlm/layer_norm/norm/bias", "mlm/bias", "nsp/dense/kernel",
        "nsp/dense/bias"}


def test_knobs_change_only_what_they_name():
    cfg = dataclasses.replace(TINY, embedding_size=16, num_layers=4, num_hidden_groups=1,
                              type_vocab_size=0)
    model = build_model("masked_lm", cfg)
    flat = {"/".join(map(str, k)): v.shape for k, v in interop.flat_params(model).items()}
    assert flat["bert/embeddings/word_embeddings/embedding"] == (99, 16)
    assert flat["bert/embeddings/projection/kernel"] == (16, 48)
    assert flat["mlm/transform/kernel"] == (48, 16)  # H -> E before the tied decoder
    assert not any("token_type" in k for k in flat)
    assert {k.split("/")[3] for k in flat if "/encoder/layers/" in k} == {"0"}  # one shared layer
    b = _batch(2, 10)
    out = model(b["input_ids"], b["segment_ids"], b["input_mask"],
                np.array([[1, 2], [3, 4]], np.int32))
    assert out["mlm_logits"].shape == (2, 2, 99)


def test_roberta_positions_follow_the_pad_id():
    # fairseq: real tokens count from pad + 1, padding sits at pad. Written out by hand.
    model = build_model("base", dataclasses.replace(TINY, arch="roberta", type_vocab_size=1,
                                                    pad_token_id=5, position_offset=6))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)
    got = np.asarray(model.embeddings.positions(5, mask))
    np.testing.assert_array_equal(got, [[6, 7, 8, 5, 5], [6, 7, 8, 9, 10]])
    # with_pad_id keeps the usable positions: 514 rows at pad 1 are 512 positions.
    derived = archs.with_pad_id({"max_position_embeddings": 514, "position_offset": 2}, 0)
    assert derived == {"max_position_embeddings": 513, "position_offset": 1, "pad_token_id": 0}
    bert = archs.with_pad_id({"max_position_embeddings": 512, "position_offset": 0}, 0)
    assert bert["max_position_embeddings"] == 512 and bert["position_offset"] == 0


def test_a_checkpoint_written_before_the_arch_axis_loads_unchanged(tmp_path):
    model = build_model("pretraining", TINY, seed=3)
    old_config = {k: v for k, v in TINY.to_dict().items() if k in OLD_KEYS}
    assert set(old_config) == set(OLD_KEYS)
    ckpt_lib.save_params(str(tmp_path / "old"), nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                         {**old_config, "task": "pretraining"})
    loaded, cfg, task, report, _ = model_files.load_model(str(tmp_path / "old"))
    assert task == "pretraining" and cfg.arch == "bert" and not report["missing"]
    want, got = interop.flat_params(model), interop.flat_params(loaded)
    assert set(want) == set(got)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_model_config_refuses_unknown_keys_and_archs():
    with pytest.raises(UserError, match="keys this bertjax does not know: colour"):
        BertConfig.from_dict({**TINY.to_dict(), "colour": "red"})
    with pytest.raises(UserError, match="model.arch='xlnet' is not an architecture"):
        BertConfig.from_dict({**TINY.to_dict(), "arch": "xlnet"})


# --------------------------------------------------------------------------- bad input, one line


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    import transformers

    root = tmp_path_factory.mktemp("family")
    hf = transformers.BertModel(transformers.BertConfig(
        vocab_size=99, hidden_size=48, num_hidden_layers=1, num_attention_heads=3,
        intermediate_size=37))
    hf.save_pretrained(root / "xlnet")
    config = json.loads((root / "xlnet" / "config.json").read_text())
    (root / "xlnet" / "config.json").write_text(json.dumps({**config, "model_type": "xlnet"}))
    model = build_model("base", TINY)
    for name, extra in (("alien", {"arch": "alien"}), ("extra_key", {"colour": "red"})):
        ckpt_lib.save_params(str(root / name), nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                             {**TINY.to_dict(), "task": "base", **extra})
    return root


@pytest.mark.parametrize("case,args,needles", [
    ("model_type", ["convert", "--from_hf={root}/xlnet", "--out={root}/o1"],
     ["model_type 'xlnet'", "albert, bert, deberta-v2, distilbert, electra, roberta"]),
    ("arch", ["export", "--checkpoint={root}/alien", "--format=hf", "--out={root}/o2"],
     ["model.arch='alien'"]),
    ("key", ["convert", "--checkpoint={root}/extra_key", "--to_hf={root}/o3"],
     ["does not know: colour"]),
])
def test_family_bad_input_ends_in_one_line(checkpoints, case, args, needles):
    proc = run_cli(*(a.format(root=checkpoints) for a in args))
    one_line(proc, *needles)
    assert not any(p.startswith("o") for p in os.listdir(checkpoints)), case


def test_plan_with_splash_and_attention_dropout_ends_in_one_line():
    proc = run_cli("plan", "--config=configs/roberta.py:tiny", "--topology=v5e:2x2",
                   "--config.model.attention_backend=splash",
                   "--config.model.attention_dropout=0.1")
    one_line(proc, "attention_backend='splash'", "attention_dropout")


@pytest.mark.slow
def test_plan_compiles_roberta_with_splash_and_writes_its_records(tmp_path):
    records = tmp_path / "roberta-tiny.jsonl"
    proc = run_cli("plan", "--config=configs/roberta.py:tiny", "--topology=v5e:2x2",
                   "--config.model.vocab_size=512", "--config.model.attention_dropout=0.0",
                   f"--records={records}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(rows) == 1 and rows[0] == json.loads(proc.stdout.splitlines()[0])
    row = rows[0]
    assert row["task"] == "masked_lm" and row["compiled"] and row["fits"]
    assert row["uses_splash_kernel"] and row["attention"]["train"] == "splash"
