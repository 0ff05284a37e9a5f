"""Distillation (objective.name=distill, `bertjax distill`): the KL term against a hand
computation, a frozen teacher that gets no gradient and stays bit-equal, the layer-map init, the
vocabulary check, exact resume with the teacher out of the checkpoints, `plan` counting the
teacher, and the bad inputs that end in one line."""
import importlib.util
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import pretrain_support as ps
from cli_support import one_line, run_cli
from bertjax import pretrain
from bertjax.errors import UserError
from bertjax.load import model_files
from bertjax.load import teacher as teacher_lib
from bertjax.model import BertConfig, build_model
from bertjax.train import aot, objectives
from bertjax.train import mesh as mesh_lib
from bertjax.train.distill import Distillation, default_layer_map, teacher_config
from bertjax.train.run_plan import RunPlan
from bertjax.train.step import make_steps, model_arrays

ROOT = ps.ROOT
TEACHER_LAYERS = 4


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_kl_term_and_the_whole_loss_equal_a_hand_computation():
    obj = Distillation()
    # One real token, two entries: p_t = (1/2, 1/2), p_s = softmax((2 ln 3, 0) / 2) = (3/4, 1/4);
    # KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3), times T^2 = 4: 2 ln(4/3). The padded token's
    # wild logits must not count.
    logits = jnp.asarray([[[2 * np.log(3.0), 0.0], [50.0, -50.0]]], jnp.float32)
    teacher = jnp.asarray([[[0.0, 0.0], [-50.0, 50.0]]], jnp.float32)
    hidden = jnp.ones((1, 2, 3), jnp.float32)
    batch = {"input_ids": jnp.zeros((1, 2), jnp.int32), "segment_ids": jnp.zeros((1, 2), jnp.int32),
             "input_mask": jnp.asarray([[1, 0]], jnp.int32),
             "masked_lm_positions": jnp.zeros((1, 1), jnp.int32),
             "masked_lm_ids": jnp.zeros((1, 1), jnp.int32),
             "masked_lm_weights": jnp.ones((1, 1), jnp.float32)}
    out = {"logits": logits, "teacher_logits": teacher, "hidden": hidden, "teacher_hidden": hidden}
    _, sums = obj.loss(out, batch)
    assert objectives.finalize(sums)["kl_loss"] == pytest.approx(2 * np.log(4 / 3), rel=1e-6)

    # A random case, every term by numpy, and the KL as DistilBERT computes it (torch's
    # KLDivLoss, batchmean over the real tokens, times T^2).
    rng = np.random.default_rng(0)
    b, s, v, h, p = 3, 6, 11, 5, 2
    s_logits, t_logits = rng.normal(size=(2, b, s, v)) * 3
    s_hid, t_hid = rng.normal(size=(2, b, s, h))
    mask = (np.arange(s)[None] < np.array([[6], [4], [2]])).astype(np.int32)
    pos = rng.integers(0, 2, (b, p))
    ids = rng.integers(0, v, (b, p))
    w = np.array([[1, 1], [1, 0], [0, 1]], np.float32)
    batch = {"input_ids": jnp.zeros((b, s), jnp.int32), "segment_ids": jnp.zeros((b, s), jnp.int32),
             "input_mask": jnp.asarray(mask), "masked_lm_positions": jnp.asarray(pos, jnp.int32),
             "masked_lm_ids": jnp.asarray(ids, jnp.int32), "masked_lm_weights": jnp.asarray(w)}
    out = {k: jnp.asarray(x, jnp.float32) for k, x in (("logits", s_logits), ("teacher_logits", t_logits),
                                                      ("hidden", s_hid), ("teacher_hidden", t_hid))}
    loss, sums = obj.loss(out, batch)
    got = objectives.finalize(sums)
    real = mask > 0
    pt, pst = _softmax(t_logits / 2.0), _softmax(s_logits / 2.0)
    kl = 4.0 * (pt * (np.log(pt) - np.log(pst))).sum(-1)[real].mean()
    import torch

    ref = torch.nn.KLDivLoss(reduction="batchmean")(
        torch.log_softmax(torch.tensor(s_logits[real]) / 2.0, -1),
        torch.softmax(torch.tensor(t_logits[real]) / 2.0, -1)).item() * 4.0
    cos = (s_hid * t_hid).sum(-1) / np.linalg.norm(s_hid, axis=-1) / np.linalg.norm(t_hid, axis=-1)
    cos_loss = (1 - cos)[real].mean()
    at = np.take_along_axis(s_logits, pos[..., None], axis=1)
    ce = -np.log(np.take_along_axis(_softmax(at), ids[..., None], -1)[..., 0])
    mlm = (ce * w).sum() / w.sum()
    t_at = np.take_along_axis(t_logits, pos[..., None], axis=1)
    agree = ((at.argmax(-1) == t_at.argmax(-1)) * w).sum() / w.sum()
    assert kl == pytest.approx(ref, rel=1e-6)
    assert got["kl_loss"] == pytest.approx(kl, rel=1e-5)
    assert got["cos_loss"] == pytest.approx(cos_loss, rel=1e-5)
    assert got["mlm_loss"] == pytest.approx(mlm, rel=1e-5)
    assert got["teacher_agreement"] == pytest.approx(agree)
    assert float(loss) == pytest.approx(5.0 * kl + 2.0 * mlm / (1 + 1e-5 / w.sum()) + cos_loss,
                                        rel=1e-5)


def test_default_layer_map_is_distilberts():
    assert default_layer_map(6, 12) == (0, 2, 4, 7, 9, 11)
    assert default_layer_map(2, 4) == (0, 3)


# --- a teacher, data and a run --------------------------------------------------------------


def _teacher(path, vocab_size, vocab_file, *, layers=TEACHER_LAYERS, hidden=32, seed=11,
             task="masked_lm"):
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_layers=layers,
                     num_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64)
    model = build_model(task, cfg, seed=seed)
    # Fresh biases and LayerNorms are the same in every layer: noise makes each layer its own,
    # so a copy of the wrong one shows.
    rng = np.random.default_rng(seed)
    nnx.update(model, jax.tree.map(lambda x: x + 0.02 * rng.normal(size=x.shape).astype(x.dtype),
                                   nnx.state(model, nnx.Param)))
    model_files.save_checkpoint(path, model, cfg, task, extra_files={"vocab.txt": vocab_file})
    return path


def _config(data_dir, vocab, teacher, **kw):
    spec = importlib.util.spec_from_file_location("distill_recipe",
                                                  os.path.join(ROOT, "configs", "distill.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    values = {"distill.teacher": teacher, "train.num_steps": 6, "train.checkpoint_every": 3,
              "optim.learning_rate": 1e-2, **kw}
    return ps.apply(mod.get_config("tiny"), ps.overrides(data_dir, vocab, **values))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data_dir, vocab = ps.prepare(str(root / "data"), nsp=False, masking="dynamic")
    teacher = _teacher(str(root / "teacher"), vocab, str(root / "data" / "vocab.txt"))
    return root, data_dir, vocab, teacher


@pytest.fixture(scope="module")
def run(setup):
    root, data_dir, vocab, teacher = setup
    workdir = str(root / "run")
    cfg = _config(data_dir, vocab, teacher)
    result = pretrain.pretrain(cfg, workdir)
    return cfg, workdir, result


def _flat(tree):
    keys, leaves, _ = teacher_lib._leaves(tree)
    return {"/".join(k): np.asarray(jax.device_get(x)) for k, x in zip(keys, leaves)}


def _saved_arrays(step_dir):
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as ckptr:
        tree = ckptr.restore(os.path.join(step_dir, "state"))
    return {"/".join(map(teacher_lib._name, k)): np.asarray(v) for k, v in
            jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_a_run_logs_every_term_and_the_teacher_stays_frozen_and_out_of_checkpoints(setup, run):
    _, _, _, teacher = setup
    cfg, workdir, result = run
    rows = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    keys = set().union(*(r.keys() for r in rows))
    for m in ("loss", "kl_loss", "mlm_loss", "cos_loss", "teacher_agreement", "mlm_accuracy"):
        assert f"train/{m}" in keys, keys
    plan = json.load(open(os.path.join(workdir, "run_plan.json")))
    assert plan["task_model"] == "masked_lm" and plan["init_from"] == teacher

    # Bit-equal after six steps at lr 1e-2, and never in the trained or optimizer state.
    loaded = teacher_lib.teacher_arrays(model_files.load_model(teacher, task="masked_lm")[0])
    frozen = _flat(result.state["frozen"])
    assert sorted(frozen) == sorted("teacher/" + "/".join(k) for k in loaded)
    for k, v in loaded.items():
        np.testing.assert_array_equal(frozen["teacher/" + "/".join(k)], v)
    assert not any("teacher" in k for k in _flat(result.state["params"]))
    assert not any("teacher" in k for k in _flat(result.state["opt_state"]))

    # The checkpoints hold the student alone: a masked-LM model that load_model reads as is.
    saved = _saved_arrays(os.path.join(workdir, "checkpoints", "6"))
    assert saved and not any("frozen" in k or "teacher" in k for k in saved)
    student, scfg, task, _, _ = model_files.load_model(workdir)
    assert (task, scfg.num_layers) == ("masked_lm", 2)
    assert any(k.startswith("params/bert/encoder/layers/1/") for k in saved)
    # The student trained: its layer 1 started as the teacher's layer 3 (the default map for
    # 4 -> 2) and moved away from it.
    key = "bert/encoder/layers/1/output/kernel"
    start = loaded[tuple(key.replace("layers/1/", "layers/3/").split("/"))]
    trained = next(v for k, v in saved.items() if k.startswith("params/" + key))
    assert trained.shape == start.shape and not np.allclose(trained, start)


def _student_cfg(vocab, **kw):
    return BertConfig(**{**dict(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2,
                                intermediate_size=64, max_position_embeddings=64), **kw})


def _objective(teacher, vocab, scan=False, **kw):
    """(objective, student config) for a student of the tiny recipe's shape."""
    scfg = _student_cfg(vocab, scan_layers=scan)
    return Distillation(teacher=teacher_config(teacher, scfg.to_dict()), teacher_path=teacher,
                        **kw), scfg


def test_the_teacher_gets_no_gradient(setup):
    _, _, vocab, teacher = setup
    obj, scfg = _objective(teacher, vocab, layer_map=(0, 3))
    graphdef, student, frozen = nnx.split(obj.build("masked_lm", scfg), obj.trainable, ...)
    assert jax.tree.leaves(frozen) and all(
        str(k[0]) == "teacher" for k, _ in nnx.to_flat_state(frozen))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(5, vocab, (4, 16)), jnp.int32)
    batch = {"input_ids": ids, "segment_ids": jnp.zeros_like(ids), "input_mask": jnp.ones_like(ids),
             "masked_lm_positions": jnp.asarray(rng.integers(0, 16, (4, 3)), jnp.int32),
             "masked_lm_ids": jnp.asarray(rng.integers(5, vocab, (4, 3)), jnp.int32),
             "masked_lm_weights": jnp.ones((4, 3), jnp.float32)}

    def loss(student, frozen):
        m = nnx.merge(graphdef, student, frozen)
        return obj.loss(obj.forward(m, batch, jax.random.key(0)), batch)[0]

    # The student's gradient is the run's (test above: its weights move, the teacher's do not).
    g_teacher = jax.jit(jax.grad(loss, argnums=1))(student, frozen)
    assert jax.tree.leaves(g_teacher)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(g_teacher))


def _init(obj, scfg):
    """The parts a run starts from ({"params", "frozen"}) and the fresh ones they replace."""
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    steps = make_steps(lambda: obj.build("masked_lm", scfg, seed=3), obj, optax.adam(1e-3), mesh)
    state = steps.init()
    target = mesh_lib.with_shardings(steps.abstract_state, steps.state_shardings)
    parts, _ = teacher_lib.init_parts(obj)(model_arrays(target), model_arrays(state))
    return parts, model_arrays(state)


@pytest.mark.parametrize("scan", [False, True])
def test_layer_map_init_copies_exactly_the_mapped_layers(setup, scan):
    _, _, vocab, teacher = setup
    layer_map = (3, 1)  # any map, in any order
    obj, scfg = _objective(teacher, vocab, scan, layer_map=layer_map)
    parts, fresh = _init(obj, scfg)
    src = {"/".join(k): v for k, v in teacher_lib.teacher_arrays(
        model_files.load_model(teacher, task="masked_lm")[0]).items()}
    params, fresh = _flat(parts["params"]), _flat(fresh["params"])
    prefix = "bert/encoder/layers/"

    def student_layers(key):
        """(layer, rest) for each layer a student key holds: one, or all of a scanned stack."""
        rest = key[len(prefix):]
        if rest.split("/")[0].isdigit():
            i, rest = rest.split("/", 1)
            return [(int(i), rest, params[key])]
        return [(i, rest, params[key][i]) for i in range(params[key].shape[0])]

    layers_seen = set()
    for key, value in params.items():
        if key.startswith(prefix):
            for i, rest, x in student_layers(key):
                layers_seen.add(i)
                np.testing.assert_array_equal(x, src[f"{prefix}{layer_map[i]}/{rest}"])
                for j in set(range(TEACHER_LAYERS)) - {layer_map[i]}:
                    assert not np.array_equal(x, src[f"{prefix}{j}/{rest}"]), (key, j)
        else:  # the embeddings and the MLM head, as the teacher's
            assert key.startswith(("bert/embeddings/", "mlm/")), key
            np.testing.assert_array_equal(value, src[key])
    assert layers_seen == {0, 1}

    # Random init copies nothing: the student is the fresh masked-LM model.
    parts, fresh_state = _init(_objective(teacher, vocab, scan, init="random")[0], scfg)
    got, fresh = _flat(parts["params"]), _flat(fresh_state["params"])
    for key, value in got.items():
        np.testing.assert_array_equal(value, fresh[key])
        if key.startswith("bert/embeddings/word"):
            assert not np.array_equal(value, src[key])


def test_a_truncated_checkpoint_holds_exactly_the_mapped_teacher_layers(tmp_path):
    """load/teacher.save_truncated (the embedding-distillation student): layer i is the teacher's
    layer_map[i], everything else the teacher's, as a sentence_embedding model."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                               + [f"w{i}" for i in range(27)]) + "\n")
    teacher = _teacher(str(tmp_path / "teacher"), 32, str(vocab), task="sentence_embedding")

    def arrays(model):
        flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        return {"/".join(map(str, k)): np.asarray(v) for k, v in flat.items()}

    want = arrays(model_files.load_model(teacher)[0])
    out = str(tmp_path / "student")
    teacher_lib.save_truncated(teacher, (3, 0), out, "sentence_embedding")
    student, cfg, task, _, _ = model_files.load_model(out)
    assert (task, cfg.num_layers) == ("sentence_embedding", 2)
    got = arrays(student)
    assert {k.split("/")[3] for k in got if k.startswith("bert/encoder/layers/")} == {"0", "1"}
    for key, value in got.items():
        parts = key.split("/")
        if parts[:3] == ["bert", "encoder", "layers"]:
            parts[3] = {"0": "3", "1": "0"}[parts[3]]
        np.testing.assert_array_equal(value, want["/".join(parts)])
    layer0 = "bert/encoder/layers/0/attention/qkv/kernel"
    assert not np.array_equal(got[layer0], want[layer0])


def test_a_distilbert_student_drops_the_teachers_segment_table(setup):
    _, _, vocab, teacher = setup
    obj, _ = _objective(teacher, vocab, layer_map=(0, 3))
    scfg = _student_cfg(vocab, arch="distilbert", type_vocab_size=0, pooler_act="relu")
    parts, _ = _init(obj, scfg)
    params = _flat(parts["params"])
    src = {"/".join(k): v for k, v in teacher_lib.teacher_arrays(
        model_files.load_model(teacher, task="masked_lm")[0]).items()}
    assert not any("token_type" in k for k in params)
    for k in ("bert/embeddings/word_embeddings/embedding", "bert/encoder/layers/1/output/kernel"):
        want = src[k.replace("layers/1/", "layers/3/")]
        np.testing.assert_array_equal(params[k], want)


def test_a_hugging_face_directory_teaches_as_the_checkpoint_it_was_exported_from(setup, tmp_path):
    root, _, vocab, teacher = setup
    from bertjax.text import load_tokenizer
    from bertjax.tools import export

    hf = str(tmp_path / "hf")
    export.export(teacher, "hf", hf)
    assert os.path.exists(os.path.join(hf, "config.json"))
    teacher_lib.check_vocabulary(hf, load_tokenizer(str(root / "data" / "vocab.txt")).identity())
    obj, scfg = _objective(hf, vocab, layer_map=(0, 3))
    parts, _ = _init(obj, scfg)
    ref, _ = _init(_objective(teacher, vocab, layer_map=(0, 3))[0], scfg)
    for part in ("params", "frozen"):
        got, want = _flat(parts[part]), _flat(ref[part])
        assert sorted(got) == sorted(want)
        for k, v in want.items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_resume_equals_the_unbroken_run_and_reloads_the_teacher(setup, run, tmp_path, capsys):
    cfg, workdir, result = run
    again = str(tmp_path / "again")
    shutil.copytree(workdir, again)
    for name in os.listdir(os.path.join(again, "checkpoints")):
        if name.isdigit() and int(name) > 3:
            shutil.rmtree(os.path.join(again, "checkpoints", name))
    os.remove(os.path.join(again, "COMPLETED"))
    capsys.readouterr()
    resumed = pretrain.pretrain(cfg, again)
    assert "resumed from step 3" in capsys.readouterr().out
    want = _saved_arrays(os.path.join(workdir, "checkpoints", "6"))
    got = _saved_arrays(os.path.join(again, "checkpoints", "6"))
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    ref, now = ps.losses(workdir), ps.losses(again)
    assert [now[s] for s in (4, 5, 6)] == [ref[s] for s in (4, 5, 6)]
    for k, v in _flat(result.state["frozen"]).items():
        np.testing.assert_array_equal(_flat(resumed.state["frozen"])[k], v)


def test_resume_with_another_teacher_is_refused(setup, run, tmp_path):
    root, _, vocab, teacher = setup
    cfg, workdir, _ = run
    assert json.load(open(os.path.join(workdir, teacher_lib.RECORD_FILE)))["path"] == teacher
    again = str(tmp_path / "again")
    shutil.copytree(workdir, again)
    os.remove(os.path.join(again, "COMPLETED"))
    _teacher(str(tmp_path / "changed"), vocab, str(root / "data" / "vocab.txt"), seed=12)
    with cfg.unlocked():
        cfg.distill.teacher = str(tmp_path / "changed")
    try:
        with pytest.raises(UserError, match="is not the one this run started from"):
            pretrain.pretrain(cfg, again)
    finally:
        with cfg.unlocked():
            cfg.distill.teacher = teacher


def test_plan_counts_the_teacher(setup):
    """The compiled step's arguments grow by the teacher's weights (frozen: no optimizer state)."""
    _, data_dir, vocab, teacher = setup
    cfg = _config(data_dir, vocab, teacher)
    # Two chips of a data-parallel mesh: each holds the whole teacher, as each holds the student.
    mesh = mesh_lib.make_mesh(cfg.mesh, jax.devices()[:2])
    scfg = BertConfig.from_dict(cfg.model.to_dict())
    sizes = {}
    for name in ("mlm", "distill"):
        with cfg.unlocked():
            cfg.objective.name = name
        obj = objectives.from_config(cfg, nsp=False)
        plan = RunPlan.from_config(cfg, task_model=obj.model_task)
        steps, _, _ = aot.build_steps(cfg, plan, obj, lambda o=obj: o.build("masked_lm", scfg),
                                      mesh)
        c = aot.compile_train_step(steps, obj, mesh, 16, ps.SEQ, ps.PREDS)
        sizes[name] = c.argument_bytes
    t_cfg = obj.teacher
    t_bytes = sum(x.nbytes for x in teacher_lib.teacher_arrays(
        build_model("masked_lm", t_cfg)).values())
    grown = sizes["distill"] - sizes["mlm"]
    assert abs(grown - t_bytes) <= 0.05 * t_bytes, (sizes, t_bytes)


# --- bad input: one line, exit 2 --------------------------------------------------------------


@pytest.mark.parametrize("case", ["not_a_checkpoint", "layer_past_depth", "wider_student"])
def test_bad_input_ends_in_one_line(setup, case, tmp_path):
    root, data_dir, vocab, teacher = setup
    kw, needle = {}, ""
    if case == "not_a_checkpoint":
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "notes.txt").write_text("not a model")
        kw, needle = {"distill.teacher": str(empty)}, "is neither a Hugging Face model directory"
    elif case == "layer_past_depth":
        kw, needle = {"distill.layer_map": "0,4"}, "past the teacher's depth (4 layers: 0..3)"
    else:
        kw, needle = {"model.hidden_size": 64, "model.intermediate_size": 128}, \
            "is wider than its teacher (32)"
    values = {"distill.teacher": teacher, **kw}
    args = ps.overrides(data_dir, vocab, **values)
    r = run_cli("distill", "--config=configs/distill.py:tiny", f"--workdir={tmp_path / 'w'}", *args)
    one_line(r, needle)
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


# --- embedding distillation (embedding_mse) ----------------------------------------------------


def test_embedding_mse_equals_its_definition():
    from bertjax.train.distill import EmbeddingMSE

    rng = np.random.default_rng(1)
    emb, target = rng.normal(size=(2, 4, 6))
    obj = EmbeddingMSE(dim=6)
    batch = {"target": jnp.asarray(target, jnp.float32),
             "example_weight": jnp.asarray([1, 1, 1, 0], jnp.float32)}
    loss, sums = obj.loss({"embedding": jnp.asarray(emb, jnp.float32)}, batch)
    want = ((emb[:3] - target[:3]) ** 2).mean()  # torch's MSELoss over the real rows
    assert float(loss) == pytest.approx(want, rel=1e-5)
    got = objectives.finalize(sums)
    assert got["loss"] == pytest.approx(want, rel=1e-5)
    cos = (emb * target).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(target, axis=1)
    assert got["cosine"] == pytest.approx(cos[:3].mean(), rel=1e-5)
    assert obj.batch_spec(8, 16, 0)["target"] == ((8, 6), jnp.float32)


def test_a_student_learns_the_teachers_sentence_embeddings(tmp_path):
    """sentence-transformers' model distillation: a 1-layer student (another random init) fits a
    2-layer teacher's mean-pooled, normalised embeddings; the dev MSE falls epoch by epoch."""
    import embedding_support as es
    import finetune_support as fs
    import toy_tasks as toy
    from bertjax import api
    from bertjax.finetuning.embedding_task import SENTENCE_CONFIG

    tok = toy.toy_tokenizer(str(tmp_path / "vocab"))
    extra = {"vocab.txt": tok.vocab_path}
    tcfg = BertConfig(vocab_size=tok.vocab_size, **{**fs.TINY_MODEL, "num_layers": 2})
    teacher = str(tmp_path / "teacher")
    model_files.save_checkpoint(teacher, build_model("sentence_embedding", tcfg, seed=5), tcfg,
                                "sentence_embedding", extra_files={**extra, SENTENCE_CONFIG: json.dumps(
                                    {"pooling": "mean", "normalize": True}).encode()})
    scfg = BertConfig(vocab_size=tok.vocab_size, **fs.TINY_MODEL)
    student = str(tmp_path / "student")
    model_files.save_checkpoint(student, build_model("sentence_embedding", scfg, seed=6), scfg,
                                "sentence_embedding", extra_files=extra)
    rows = [{"text": r["query"]} for r in es.triplets(96, 0)]
    train = es.write_jsonl(str(tmp_path / "train.jsonl"), rows[:64])
    dev = es.write_jsonl(str(tmp_path / "dev.jsonl"), rows[64:])
    cfg = fs.tiny(fs.recipe("embeddings"), student, epochs=4, lr=3e-3, batch=16)
    cfg.task.train_file, cfg.task.dev_file, cfg.task.teacher = train, dev, teacher
    s = api.finetune(cfg, str(tmp_path / "wd"), log=lambda m: None)
    assert s["best_metric"] == "mse_loss"
    evals = [json.loads(x) for x in open(tmp_path / "wd" / "seed-0" / "metrics.jsonl")]
    mse = [r["eval/mse_loss"] for r in evals if "eval/mse_loss" in r]
    assert len(mse) == 4 and mse[-1] < 0.5 * mse[0], mse


def test_sentence_data_needs_a_teacher_and_a_teacher_needs_sentence_data(tmp_path):
    import embedding_support as es
    import finetune_support as fs

    ckpt, _ = fs.make_checkpoint(str(tmp_path), task="sentence_embedding")
    sentences = es.write_jsonl(str(tmp_path / "s.jsonl"), [{"text": "paris is big"}] * 4)
    triplets = es.write_task(str(tmp_path / "data"), "triplets")
    base = ["finetune", "--config=configs/embeddings.py", f"--config.init_from={ckpt}",
            f"--workdir={tmp_path / 'wd'}"]
    r = run_cli(*base, f"--config.task.train_file={sentences}",
                f"--config.task.dev_file={sentences}")
    one_line(r, "task.teacher=''", "sentences data")
    r = run_cli(*base, f"--config.task.train_file={triplets['train_file']}",
                f"--config.task.dev_file={triplets['dev_file']}", f"--config.task.teacher={ckpt}")
    one_line(r, "with triplets data")


def test_a_teacher_of_another_vocabulary_is_refused(setup, tmp_path):
    _, data_dir, vocab, _ = setup
    words = open(os.path.join(data_dir, "..", "vocab.txt")).read().replace("\ncat\n", "\ncow\n")
    (tmp_path / "vocab.txt").write_text(words)
    other = _teacher(str(tmp_path / "other"), vocab, str(tmp_path / "vocab.txt"))
    with pytest.raises(UserError, match="tokenizer mismatch for the teacher .*vocab"):
        pretrain.pretrain(_config(data_dir, vocab, other), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_the_benchmarks_demo_preset_is_the_demo_at_half_depth_with_the_distill_loss():
    """The distillation benchmark's students differ in objective and start only: the distilled
    one's recipe is configs/demo.py field for field, but for its depth and the distill loss."""
    from bertjax import api
    from bertjax.bench import distill as bench

    demo = api.recipe(os.path.join(ROOT, "configs/demo.py")).to_dict()
    student = api.recipe(os.path.join(ROOT, "configs/distill.py") + ":demo").to_dict()
    assert (demo["model"]["num_layers"], student["model"]["num_layers"]) == (4, 2)
    assert (student["objective"]["name"], student["distill"]["init"]) == ("distill", "teacher")
    for c in (demo, student):
        c["model"].pop("num_layers")
        c["objective"].pop("name")
    student.pop("distill")
    assert student == demo
    teacher = "T"
    cmds = {name: bench.student_commands(name, "W", "D", teacher, 150, 2, vocab_size=8000)
            for name in bench.STUDENTS}
    assert cmds["scratch_mlm"][:2] == ["bertjax.pretrain", "--config=configs/demo.py"]
    shared = set(cmds["scratch_mlm"][2:])
    assert "--config.optim.warmup_steps=15" in shared
    for name, init in (("distilled", "teacher"), ("distilled_random_init", "random")):
        assert cmds[name][:2] == ["bertjax.distill", "--config=configs/distill.py:demo"]
        assert set(cmds[name][2:]) - shared == {f"--config.distill.teacher={teacher}",
                                                f"--config.distill.init={init}"}
