"""LoRA (issue 28): adapters on the chosen linear maps of the one encoder, trained alone with the
task head while the base stays frozen, saved in kilobytes, exported for PEFT and merged for
Hugging Face; and the bad inputs, each ending in one line."""
import dataclasses
import json
import os

import jax
import numpy as np
import optax
import pytest

from cli_support import one_line, run_cli
from bertjax.errors import UserError
from bertjax.interop import params as interop
from bertjax.model import BertConfig, build_model
from bertjax.train import adapters
from bertjax.train import mesh as mesh_lib
from bertjax.train import objectives
from bertjax.train.step import make_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Odd sizes (hidden 48, 3 heads, FFN 37) so that a transposed or swapped matrix shows.
TINY = BertConfig(vocab_size=99, hidden_size=48, num_layers=2, num_heads=3, intermediate_size=37,
                  max_position_embeddings=64, num_labels=3, hidden_dropout=0.0,
                  attention_dropout=0.0)
ALL = "query,key,value,attention_output,intermediate,output"


def _lora(cfg=TINY, rank=4, alpha=8.0, targets=ALL, **kw):
    return dataclasses.replace(cfg, lora_rank=rank, lora_alpha=alpha, lora_targets=targets, **kw)


def _batch(n=8, seq=12, seed=0):
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(5, 99, (n, seq)).astype(np.int32),
            "segment_ids": np.zeros((n, seq), np.int32),
            "input_mask": np.ones((n, seq), np.int32),
            "labels": rng.integers(0, 3, (n,)).astype(np.int32)}


def _logits(model, b):
    return np.asarray(model(b["input_ids"], b["segment_ids"], b["input_mask"])["logits"])


def _flat(model):
    return {"/".join(map(str, k)): v for k, v in interop.flat_params(model).items()}


# --------------------------------------------------------------------------- the adapters


@pytest.mark.parametrize("scan", [False, True])
def test_step_zero_equals_the_base_model_exactly(scan):
    cfg = dataclasses.replace(TINY, scan_layers=scan)
    base = build_model("sequence_classification", cfg, seed=1)
    model = build_model("sequence_classification", _lora(cfg), seed=1)
    flat_base, flat = _flat(base), _flat(model)
    # Adapters add parameters and change none: every other one initialises as without them.
    assert set(flat_base) < set(flat)
    for k, v in flat_base.items():
        np.testing.assert_array_equal(flat[k], v)
    added = sorted(k for k in flat if k not in flat_base)
    assert all("/lora/" in k for k in added)
    assert {k.split("/lora/")[1] for k in added} == {
        f"{t}/{m}" for t in ALL.split(",") for m in "ab"}
    # B starts at zero, so the model computes exactly what its base does.
    assert all(not flat[k].any() for k in added if k.endswith("/b"))
    b = _batch()
    np.testing.assert_array_equal(_logits(model, b), _logits(base, b))


def test_adapters_compute_the_low_rank_update_of_each_target():
    """With random B, each target's adapter changes the model as W0 + (alpha/r) B A would: the
    merged weights, written out here with numpy, give the same logits."""
    rng = np.random.default_rng(3)
    model = build_model("sequence_classification", _lora(alpha=6.0, rank=3), seed=2)
    flat = interop.flat_params(model)
    for k in flat:
        if k[-1] == "b" and "lora" in k:
            flat[k] = rng.normal(0, 0.3, flat[k].shape).astype(np.float32)
    interop.set_flat_params(model, flat)
    merged = dict(flat)
    scale = 6.0 / 3
    for i in range(TINY.num_layers):
        layer = ("bert", "encoder", "layers", i)

        def ab(*where, layer=layer):
            a, b = flat[layer + where + ("a",)], flat[layer + where + ("b",)]
            return np.tensordot(a, b, axes=1) * scale

        qkv = merged[layer + ("attention", "qkv", "kernel")].copy()
        for t, name in enumerate(("query", "key", "value")):
            qkv[:, t] += ab("attention", "lora", name)
        merged[layer + ("attention", "qkv", "kernel")] = qkv
        merged[layer + ("attention", "out", "kernel")] = (
            flat[layer + ("attention", "out", "kernel")] + ab("attention", "lora",
                                                               "attention_output"))
        for name in ("intermediate", "output"):
            merged[layer + (name, "kernel")] = flat[layer + (name, "kernel")] + ab("lora", name)
    plain = build_model("sequence_classification", TINY)
    interop.set_flat_params(plain, {k: v for k, v in merged.items() if "lora" not in k})
    b = _batch()
    got, want = _logits(model, b), _logits(plain, b)
    assert np.abs(got - _logits(build_model("sequence_classification", TINY, seed=2), b)).max() > 1e-2
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_frozen_base_no_optimizer_state_for_it_and_adapters_sharded_like_their_base():
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    # 4 heads, so that the heads axis splits over tensor=2 (3 would be replicated).
    cfg = _lora(dataclasses.replace(TINY, num_heads=4), rank=4)
    objective = adapters.wrap(objectives.make("classification"), cfg.to_dict())
    assert objective.name == "classification" and objective.save_frozen is False
    steps = make_steps(lambda: build_model("sequence_classification", cfg), objective,
                       optax.adam(1e-2), mesh)
    state = steps.init()
    flat_params = jax.tree_util.tree_flatten_with_path(state["params"])[0]
    names = sorted("/".join(str(adapters._key(p)) for p in path if adapters._key(p) != "value")
                   for path, _ in flat_params)
    # Only the adapters and the head: the classifier and the pooler (the [CLS] head's dense).
    assert all("/lora/" in n or n.startswith(("classifier/", "bert/pooler/")) for n in names)
    assert sum("/lora/" in n for n in names) == 2 * 6 * TINY.num_layers
    assert not any(n.startswith(("bert/embeddings", "bert/encoder")) and "/lora/" not in n
                   for n in names)
    n_trained = sum(x.size for x in jax.tree.leaves(state["params"]))
    # Adam holds two moments per trained value and nothing for the frozen base.
    n_opt = sum(x.size for x in jax.tree.leaves(state["opt_state"]) if x.ndim)
    assert n_opt == 2 * n_trained
    # Counted by hand, rank 4: q, k, v and the attention output 4 x (48*4 + 4*48), the FFN
    # (48*4 + 4*37) + (37*4 + 4*48), per layer; the pooler 48*48 + 48, the classifier 48*3 + 3.
    assert n_trained == 2 * (4 * 384 + 340 + 340) + 2352 + 147
    # The adapters of the fused q/k/v kernel [H, 3, heads, head_dim] are split like it: A on
    # the hidden axis, B on the heads axis.
    layer = state["params"]["bert"]["encoder"]["layers"][0]
    qkv = state["frozen"]["bert"]["encoder"]["layers"][0]["attention"]["qkv"]["kernel"]
    a = layer["attention"]["lora"]["query"]["a"]
    b = layer["attention"]["lora"]["query"]["b"]
    assert a.sharding.spec[0] == qkv.sharding.spec[0]
    assert b.sharding.spec[1] == qkv.sharding.spec[2] == "tensor"
    out_b = layer["lora"]["intermediate"]["b"]
    inter = state["frozen"]["bert"]["encoder"]["layers"][0]["intermediate"]["kernel"]
    assert out_b.sharding.spec[1] == inter.sharding.spec[1]

    frozen_before = jax.device_get(state["frozen"])
    params_before = jax.device_get(state["params"])
    batch = mesh_lib.make_global_batch(_batch(), mesh)
    for _ in range(2):
        state, m = steps.train(state, batch, jax.random.key(0))
        assert int(m["nonfinite"]) == 0
    # The base is bit-identical after training; every adapter moved.
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["frozen"]), frozen_before)
    moved = jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - y).max()),
                         jax.device_get(state["params"]), params_before)
    assert min(jax.tree.leaves(moved)) > 0


def test_every_fine_tuning_objective_takes_lora_unchanged():
    for name in ("classification", "regression", "token_classification", "span_qa", "infonce"):
        inner = objectives.make(name)
        wrapped = adapters.wrap(inner, {"lora_rank": 8})
        assert not wrapped.save_frozen
        for attr in ("name", "model_task", "metrics", "summable"):
            assert getattr(wrapped, attr) == getattr(inner, attr), (name, attr)
        assert wrapped.batch_spec(2, 8, 0) == inner.batch_spec(2, 8, 0)
        assert adapters.wrap(inner, {"lora_rank": 0}) is inner


def test_the_fingerprint_follows_the_weights_not_their_layout():
    plain = build_model("sequence_classification", TINY, seed=4)
    scanned = build_model("sequence_classification", dataclasses.replace(TINY, scan_layers=True),
                          seed=4)
    interop.set_flat_params(scanned, interop.flat_params(plain))
    with_adapters = build_model("sequence_classification", _lora(), seed=4)
    fp = adapters.fingerprint(adapters.base_flat(plain))
    assert adapters.fingerprint(adapters.base_flat(scanned)) == fp
    assert adapters.fingerprint(adapters.base_flat(with_adapters)) == fp
    other = build_model("sequence_classification", TINY, seed=5)
    assert adapters.fingerprint(adapters.base_flat(other)) != fp


# --------------------------------------------------------------------------- bad input


def test_bad_lora_settings_end_in_one_line_naming_the_fix():
    from bertjax.config import check_choices, finetune_config

    with pytest.raises(UserError, match="lora.targets='query,vlaue': vlaue matches no layer; "
                                        "valid names: query, key, value, attention_output, "
                                        "intermediate, output"):
        _lora(targets="query,vlaue")
    for rank in (0, -2):
        cfg = finetune_config("tiny")
        cfg.lora.enabled = True
        cfg.lora.rank = rank
        with pytest.raises(UserError, match=f"lora.rank={rank} must be a positive integer"):
            check_choices(cfg)
    cfg = finetune_config("tiny")
    cfg.lora.rank = 16
    with pytest.raises(UserError, match="lora.rank is set but lora.enabled is false"):
        check_choices(cfg)


# --------------------------------------------------------------------------- fine-tuning


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    from finetune_support import make_checkpoint

    return make_checkpoint(str(tmp_path_factory.mktemp("base")))


def _lora_run(base, data, epochs=4.0):
    from finetune_support import recipe, tiny

    cfg = tiny(recipe("glue", "rte"), base, epochs=epochs)
    cfg.task.data_dir = data
    cfg.task.eval_every = 4
    cfg.train.keep_checkpoints = 20
    cfg.lora.enabled = True
    cfg.lora.rank = 4
    cfg.lora.alpha = 16.0
    cfg.lora.targets = "all"
    return cfg


def _saved_arrays(step_dir):
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as ckptr:
        tree = ckptr.restore(str(step_dir / "state"))
    return {"/".join(map(str, k)): np.asarray(v) for k, v in
            jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base_ckpt):
    """One LoRA fine-tune (all targets, rank 4) of the tiny base on toy RTE: (cfg, workdir,
    summary)."""
    import toy_tasks as toy
    from bertjax.finetuning import run as ft_run

    root = tmp_path_factory.mktemp("lora_run")
    data = str(root / "glue")
    toy.make_toy_glue_dir(data, "rte", n_train=64, n_dev=16, n_test=4)
    cfg = _lora_run(base_ckpt[0], data)
    work = root / "work"
    return cfg, work, ft_run.finetune(cfg, str(work))


@pytest.mark.slow
def test_lora_fine_tuning_saves_adapters_only_names_its_base_and_resumes_exactly(tmp_path,
                                                                                  base_ckpt,
                                                                                  lora_run):
    import shutil

    from bertjax.finetuning import run as ft_run

    base, _ = base_ckpt
    cfg, work, summary = lora_run
    run = summary["runs"][0]
    seed_dir = work / "seed-0"
    last = max(int(p.name) for p in (seed_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert last == 16  # 64 rows / batch 16 x 4 epochs

    # The resume checkpoints and the best one hold the adapters and the head, never the base.
    saved = _saved_arrays(seed_dir / "checkpoints" / str(last))
    assert not any(k.startswith("frozen") for k in saved)
    assert not any(("embeddings" in k or "encoder" in k) and "lora" not in k for k in saved)
    ref = json.loads((seed_dir / "best" / adapters.BASE_FILE).read_text())
    assert ref == run["lora"] and ref["base"] == os.path.abspath(base)
    from bertjax.load import model_files

    base_model, *_ = model_files.load_model(base, task="sequence_classification",
                                            allow_missing=True)
    assert ref["sha256"] == adapters.fingerprint(adapters.base_flat(base_model))
    assert run["best_checkpoint_bytes"] == adapters.dir_bytes(seed_dir / "best")
    assert run["best_checkpoint_bytes"] < adapters.dir_bytes(base)

    # Resume from step 8 of the same run: the same steps, the same final state and metrics.
    again = tmp_path / "again"
    shutil.copytree(work, again)
    for p in (again / "seed-0" / "checkpoints").iterdir():
        if p.name.isdigit() and int(p.name) > 8:
            shutil.rmtree(p)
    (again / "seed-0" / "COMPLETED").unlink()
    (again / "summary.json").unlink()
    resumed = ft_run.finetune(cfg, str(again))
    got = _saved_arrays(again / "seed-0" / "checkpoints" / str(last))
    assert sorted(got) == sorted(saved)
    for k in saved:
        np.testing.assert_array_equal(got[k], saved[k], err_msg=k)
    assert resumed["runs"][0]["dev"] == run["dev"]


def _hf_inputs(n=4, seq=10, vocab=40, seed=7):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (n, seq)).astype(np.int32)
    mask = np.ones((n, seq), np.int32)
    mask[1, 6:] = 0
    segments = np.zeros((n, seq), np.int32)
    segments[:, 5:] = 1
    return ids, segments, mask


@pytest.mark.slow
def test_peft_loads_our_adapter_with_our_logits_and_the_merged_export_equals_the_unmerged(
        tmp_path, base_ckpt, lora_run):
    import torch
    import transformers
    import peft as peft_lib

    from bertjax.load import model_files
    from bertjax.tools import export as export_lib

    base, _ = base_ckpt
    _, work, _ = lora_run
    best = str(work / "seed-0" / "best")
    ours, cfg, task, *_ = model_files.load_model(best)
    assert task == "sequence_classification" and cfg.lora_rank == 4
    ids, segments, mask = _hf_inputs(vocab=cfg.vocab_size)
    want = np.asarray(ours(ids, segments, mask)["logits"])
    plain_base, *_ = model_files.load_model(base, task="sequence_classification",
                                            allow_missing=True)
    # The trained adapters move the logits away from the base's (so equality below means
    # something).
    assert np.abs(want - np.asarray(plain_base(ids, segments, mask)["logits"])).max() > 1e-3

    hf_base = str(tmp_path / "hf_base")
    export_lib.export(base, "hf", hf_base)
    adapter_dir = str(tmp_path / "peft")
    export_lib.export(best, "peft", adapter_dir)
    with torch.no_grad():
        base_model = transformers.AutoModelForSequenceClassification.from_pretrained(
            hf_base, num_labels=cfg.num_labels)
        model = peft_lib.PeftModel.from_pretrained(base_model, adapter_dir).eval()
        got = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    token_type_ids=torch.tensor(segments, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)

    merged_dir = str(tmp_path / "merged")
    export_lib.export(best, "hf", merged_dir, merge_lora=True)
    with torch.no_grad():
        merged = transformers.AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
        got = merged(input_ids=torch.tensor(ids, dtype=torch.long),
                     token_type_ids=torch.tensor(segments, dtype=torch.long),
                     attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # And in bertjax: the merged plain model computes what the unmerged adapters do.
    plain, plain_cfg, *_ = model_files.load_model(merged_dir)
    assert plain_cfg.lora_rank == 0
    np.testing.assert_allclose(np.asarray(plain(ids, segments, mask)["logits"]), want,
                               atol=1e-5, rtol=0)

    # The PEFT directory reads back as a LoRA model over the same base.
    back, back_cfg, back_task, *_ = model_files.load_model(adapter_dir, base=hf_base)
    assert back_task == task and back_cfg.lora_rank == 4 and back_cfg.lora_targets == ALL
    np.testing.assert_allclose(np.asarray(back(ids, segments, mask)["logits"]), want,
                               atol=1e-5, rtol=0)


@pytest.mark.slow
def test_embed_takes_adapters_over_a_loaded_base_and_a_wrong_base_ends_in_one_line(
        tmp_path, base_ckpt, lora_run):
    from bertjax.load import model_files
    from bertjax.tools import embed as embed_lib
    from bertjax.tools import export as export_lib

    base, tok = base_ckpt
    _, work, _ = lora_run
    best = str(work / "seed-0" / "best")
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat\na dog ran far away\n")
    lora_model, cfg, task, *_ = model_files.load_model(best)
    want = embed_lib.embed_texts(embed_lib.encoder_of(lora_model, task), tok,
                                 ["the cat sat", "a dog ran far away"], "mean", 8, 32)
    out = tmp_path / "emb.npy"
    r = run_cli("embed", f"--checkpoint={base}", f"--adapter={best}", f"--input={texts}",
             f"--output={out}", "--pooling=mean", "--max_seq_length=32")
    assert r.returncode == 0, r.stderr[-2000:]
    np.testing.assert_allclose(np.load(out), want, atol=1e-5)
    plain = embed_lib.embed_file(base, str(texts), str(tmp_path / "plain.npy"), "mean",
                                 max_seq_length=32)
    assert np.abs(plain - want).max() > 1e-4
    # One loaded base, two adapters: the bertjax checkpoint and its PEFT export give the same.
    base_model, base_cfg, _ = model_files.load_checkpoint(base, needs=model_files.ENCODER)
    export_lib.export(best, "peft", str(tmp_path / "peft"))
    from bertjax.load import lora_files

    for adapter in (best, str(tmp_path / "peft")):
        model, _, task = lora_files.attach(base_model, base_cfg, adapter)
        got = embed_lib.embed_texts(embed_lib.encoder_of(model, task), tok,
                                    ["the cat sat", "a dog ran far away"], "mean", 8, 32)
        np.testing.assert_allclose(got, want, atol=1e-5)
    from bertjax import api

    loaded = api.load(base)
    for adapter in (best, str(tmp_path / "peft")):
        got = loaded.with_adapter(adapter).embed(["the cat sat", "a dog ran far away"], "mean",
                                                 max_seq_length=32)
        np.testing.assert_allclose(got, want, atol=1e-5)

    # A base of the same architecture with other weights is refused, naming both.
    other = tmp_path / "other"
    shifted = {k: (v + 0.01 if k[-1] == "embedding" else v)
               for k, v in interop.flat_params(base_model).items()}
    interop.set_flat_params(base_model, shifted)
    model_files.save_checkpoint(str(other), base_model, base_cfg, "pretraining", extra_files={
        "vocab.txt": os.path.join(base, "vocab.txt")})
    r = run_cli("embed", f"--checkpoint={other}", f"--adapter={best}", f"--input={texts}",
             f"--output={tmp_path / 'x.npy'}")
    one_line(r, "were trained on a base whose weights have fingerprint", str(other))
    r = run_cli("export", f"--checkpoint={best}", f"--base={other}", "--format=peft",
             f"--out={tmp_path / 'x'}")
    one_line(r, "were trained on a base whose weights have fingerprint", str(base))


@pytest.mark.slow
def test_bad_lora_input_on_the_command_line_ends_in_one_line(tmp_path, base_ckpt, lora_run):
    base, _ = base_ckpt
    _, work, _ = lora_run
    best = str(work / "seed-0" / "best")
    common = ("finetune", "--config=configs/glue.py:rte", f"--config.init_from={base}",
              f"--workdir={tmp_path / 'w'}", "--config.lora.enabled=true")
    one_line(run_cli(*common, "--config.lora.targets=query,ffn"),
              "ffn matches no layer; valid names: query, key, value, attention_output, "
              "intermediate, output")
    one_line(run_cli(*common, "--config.lora.rank=0"), "lora.rank=0 must be a positive integer")
    one_line(run_cli("export", f"--checkpoint={base}", "--format=hf", "--merge_lora",
                   f"--out={tmp_path / 'm'}"), "--merge_lora", "holds no LoRA adapters")
    one_line(run_cli("export", f"--checkpoint={best}", "--format=hf", f"--out={tmp_path / 'h'}"),
              "holds LoRA adapters", "--merge_lora")
    assert not any(p.name in ("m", "h", "w") for p in tmp_path.iterdir())


# --------------------------------------------------------------------------- every member

PEFT_CASES = [("bert", "sequence_classification"), ("bert", "token_classification"),
              ("bert", "question_answering"), ("roberta", "sequence_classification"),
              ("electra", "sequence_classification"), ("albert", "sequence_classification"),
              ("albert/g2", "token_classification")]


@pytest.mark.parametrize("member,task", PEFT_CASES)
def test_every_member_exports_adapters_peft_loads_and_merges(tmp_path, member, task):
    """Random base (HF's own init), random adapters on every target and a random head: PEFT over
    the HF base gives our logits, the PEFT dir reads back, and merging changes nothing."""
    import torch
    import peft as peft_lib
    from test_hf_parity import hf_class, hf_config, make_batch

    from bertjax.interop import peft
    from bertjax.load import lora_files

    torch.manual_seed(0)
    labels = {"num_labels": 2} if task == "question_answering" else {}  # start and end
    hf_base = hf_class(member, task)(hf_config(member, **labels)).eval()
    base_dir = str(tmp_path / "base")
    hf_base.save_pretrained(base_dir)
    base_model, base_cfg, _, report = interop.load_hf(base_dir, task=task)
    assert not report["missing"]
    cfg = _lora(base_cfg, rank=3, alpha=5.0)
    model = build_model(task, cfg, seed=1)
    rng = np.random.default_rng(0)
    flat = interop.flat_params(model)
    base_flat = interop.flat_params(base_model)
    for k in flat:
        if adapters.in_base(k, task) and "lora" not in map(str, k):
            flat[k] = base_flat[k]
        else:  # adapters and head: random, so that every one of them shows
            flat[k] = rng.normal(0, 0.2, flat[k].shape).astype(np.float32)
    interop.set_flat_params(model, flat)
    head = [k for k in flat if "lora" not in map(str, k) and not adapters.in_base(k, task)]
    config, tensors = peft.to_peft(interop.flat_params(model), cfg, task, base_dir, head)
    adapter_dir = str(tmp_path / "adapter")
    peft.write(adapter_dir, config, tensors)

    b = make_batch(member=member.split("/")[0])
    args = (b["input_ids"], b["segment_ids"], b["input_mask"])
    out = model(*args)
    want = (np.asarray(out["logits"]) if "logits" in out else
            np.stack([np.asarray(out["start_logits"]), np.asarray(out["end_logits"])], -1))
    t = {k: torch.tensor(v, dtype=torch.long) for k, v in b.items()}
    with torch.no_grad():
        loaded = peft_lib.PeftModel.from_pretrained(
            hf_class(member, task).from_pretrained(base_dir), adapter_dir).eval()
        # peft 0.21.2's PeftModelForQuestionAnswering.forward drops token_type_ids (it names the
        # argument and never passes it on); its LoraModel, with the same adapters, does not.
        run = loaded.base_model if task == "question_answering" else loaded
        hf = run(input_ids=t["input_ids"], token_type_ids=t["segment_ids"],
                 attention_mask=t["input_mask"])
    got = (hf.logits.numpy() if task != "question_answering" else
           np.stack([hf.start_logits.numpy(), hf.end_logits.numpy()], -1))
    real = b["input_mask"].astype(bool) if task != "sequence_classification" else slice(None)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)

    back, back_cfg, back_task = lora_files.load_peft(adapter_dir, base_dir,
                                                     lambda *a, **k: (base_model, base_cfg),
                                                     task)
    assert back_task == task and back_cfg.lora_rank == 3 and back_cfg.lora_targets == ALL
    again = interop.flat_params(back)
    for k, v in interop.flat_params(model).items():
        np.testing.assert_allclose(again[k], v, atol=1e-7, err_msg=str(k))

    plain_cfg = dataclasses.replace(cfg, lora_rank=0)
    merged = peft.merge(interop.flat_params(model), cfg, task)
    plain = interop.model_from_flat(task, plain_cfg, {
        tuple(int(p) if p.isdigit() else p for p in k): v for k, v in merged.items()})
    out = plain(*args)
    merged_logits = (np.asarray(out["logits"]) if "logits" in out else
                     np.stack([np.asarray(out["start_logits"]), np.asarray(out["end_logits"])], -1))
    np.testing.assert_allclose(merged_logits, want, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_adapters_train_further_from_a_lora_checkpoint_or_a_peft_dir(tmp_path, lora_run):
    """init_from a LoRA best/ or its PEFT export starts from those very adapters and head: at a
    learning rate of 0 the run's best is the adapters it started from."""
    from bertjax.finetuning import run as ft_run
    from bertjax.tools import export as export_lib

    cfg, work, _ = lora_run
    best = work / "seed-0" / "best"
    export_lib.export(str(best), "peft", str(tmp_path / "peft"))
    before = _saved_params(best)
    for name, src in (("ckpt", str(best)), ("peft", str(tmp_path / "peft"))):
        again = cfg.copy_and_resolve_references()
        again.init_from = src
        again.task.epochs = 1.0
        again.optim.learning_rate = 0.0
        ft_run.finetune(again, str(tmp_path / name))
        after = _saved_params(tmp_path / name / "seed-0" / "best")
        assert sorted(after) == sorted(before)
        for k in before:
            np.testing.assert_array_equal(after[k], before[k], err_msg=f"{name}: {k}")
    again.lora.rank = 2
    with pytest.raises(UserError, match="holds rank-4 adapters on query,key,value,"
                                        "attention_output,intermediate,output; set "
                                        "--config.lora.rank=4"):
        ft_run.finetune(again, str(tmp_path / "other"))
    again.lora.enabled, again.lora.rank = False, 8
    with pytest.raises(UserError, match="holds LoRA adapters; train them further with "
                                        "--config.lora.enabled=true"):
        ft_run.finetune(again, str(tmp_path / "full"))


def _saved_params(directory):
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as ckptr:
        tree = ckptr.restore(str(directory / "params"))
    return {"/".join(map(str, k)): np.asarray(v) for k, v in
            jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow
def test_lora_on_the_embedding_family_and_embed_with_the_adapter(tmp_path):
    """An InfoNCE fine-tune with LoRA: the adapters train (in-batch accuracy rises), best/ keeps
    the sentence settings beside them, and `embed --adapter` over the base embeds as the whole
    LoRA model does, with those settings."""
    import embedding_support as es
    import finetune_support as fs

    from bertjax import api
    from bertjax.load import model_files
    from bertjax.tools import embed as embed_lib

    base, tok = fs.make_checkpoint(str(tmp_path), task="sentence_embedding")
    files = es.write_task(str(tmp_path / "data"), "triplets")
    cfg = fs.tiny(fs.recipe("embeddings"), base, epochs=3, lr=1e-2, batch=16)
    cfg.train.log_every = 4
    cfg.task.train_file, cfg.task.dev_file = files["train_file"], files["dev_file"]
    cfg.task.query_prefix = "query: "
    cfg.lora.enabled, cfg.lora.rank = True, 4
    logs = []
    summary = api.finetune(cfg, str(tmp_path / "wd"), log=logs.append)
    run = summary["runs"][0]
    # q and v of the one layer: the pooler, which no embedding reads, stays with the base.
    assert run["lora"]["trained_params"] == 2 * (32 * 4 + 4 * 32)
    acc = [float(ln.split("accuracy=")[1].split()[0]) for ln in logs
           if ln.startswith("step ") and "accuracy=" in ln]
    assert len(acc) >= 2 and acc[-1] > acc[0], acc
    best = str(tmp_path / "wd" / "seed-0" / "best")
    texts = tmp_path / "t.txt"
    texts.write_text("alpha beta\ngamma\n")
    got = embed_lib.embed_file(base, str(texts), str(tmp_path / "a.npy"), adapter=best,
                               prompt="query")
    model, cfg_, task, *_ = model_files.load_model(best)
    want = embed_lib.embed_texts(embed_lib.encoder_of(model, task), tok,
                                 ["query: alpha beta", "query: gamma"], "mean", 8, 32,
                                 normalize=True)
    np.testing.assert_allclose(got, want, atol=1e-5)

    # The adapters exported for PEFT go over the base as sentence-transformers holds it.
    from sentence_transformers import SentenceTransformer

    from bertjax.tools import export as export_lib
    export_lib.export(base, "sentence-transformers", str(tmp_path / "st_base"))
    export_lib.export(best, "peft", str(tmp_path / "st_adapter"))
    with open(tmp_path / "st_adapter" / "adapter_config.json") as f:
        assert json.load(f)["task_type"] == "FEATURE_EXTRACTION"
    st_model = SentenceTransformer(str(tmp_path / "st_base"), device="cpu")
    plain = st_model.encode(["query: alpha beta", "query: gamma"])
    st_model.load_adapter(str(tmp_path / "st_adapter"))
    st_got = st_model.encode(["query: alpha beta", "query: gamma"])
    np.testing.assert_allclose(st_got, want, atol=1e-4)
    assert np.abs(plain - want).max() > 1e-3  # the adapters are what made them equal
