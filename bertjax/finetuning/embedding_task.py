"""Sentence-embedding fine-tuning (`task.family=embeddings`): Sentence-BERT, E5, BGE, GTE style.

Data, JSONL (one object a line, UTF-8), the kind read from the first line:
- retrieval triplets `{"query": str, "positive": str, "negatives": [str, ...]}` (negatives may be
  absent or empty): objective `infonce`, in-batch negatives over the global batch;
- scored pairs `{"text_a": str, "text_b": str, "score": float}`: `cosent` (or `cosine_mse`);
- labelled pairs `{"text_a": str, "text_b": str, "label": int|str}`: `sbert_softmax`;
- sentences `{"text": str}` with `task.teacher` (any checkpoint `embed` reads): `embedding_mse`,
  sentence-transformers' model distillation. The teacher embeds every train and dev sentence
  once, before training, with its own tokenizer and sentence settings; the student learns the
  mean squared difference, and dev reports it (`mse_loss`, the best checkpoint's) and the cosine.
`objective.name=auto` picks the objective from the kind. Every line must have the fields of the
first; a missing field, bad JSON or an empty file ends in one line.

Dev metrics (task.dev_file, the same kind): triplets are scored as retrieval, every dev query
against the corpus of every distinct dev positive and negative (ndcg@10, mrr@10, recall@1/10/100;
best by mrr@10); scored pairs by the Spearman (and Pearson) correlation of cosine with the score;
labelled pairs by accuracy; sentences by the MSE to the teacher's embeddings.

Texts are tokenized once with [CLS] text [SEP] (the tokenizer's single-text layout), cut to the
fixed lengths (queries task.query_length, else data.max_seq_length) and padded: one static
shape, one compile. task.query_prefix goes before every query (and before both texts of a pair),
task.passage_prefix before every passage. Started from a sentence-transformers directory or an
embedding checkpoint, the run takes its pooling (task.pooling="") and its prompts (an empty
prefix, with task.prompts_from_start) unless the config sets them (sentence_settings). The best
checkpoint holds sentence_config.json: the pooling, normalisation, lengths and prompts, which
`bertjax export --format=sentence-transformers` and `embed` read.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import numpy as np

from bertjax.errors import UserError
from bertjax.evaluate import retrieval
from bertjax.finetuning.family import Prepared, task_path
from bertjax.interop import sentence_transformers as st_interop
from bertjax.train import objectives

SENTENCE_CONFIG = "sentence_config.json"
KINDS = {
    "triplets": (("query", "positive"), "infonce", ("infonce",)),
    "scored": (("text_a", "text_b", "score"), "cosent", ("cosent", "cosine_mse")),
    "labelled": (("text_a", "text_b", "label"), "sbert_softmax", ("sbert_softmax",)),
    "sentences": (("text",), "embedding_mse", ("embedding_mse",)),
}


def read_jsonl(path: str) -> tuple[str, list[dict]]:
    """(kind, rows); one-line UserErrors for a missing file, bad JSON, a missing field, no rows."""
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist; pass a JSONL file of query/positive/negatives "
                        "or text_a/text_b/score (or label) objects")
    rows, kind = [], None
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"{path} line {i} is not a UTF-8 JSON object ({e}); write one "
                                "JSON object per line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path} line {i} is not a JSON object")
            if kind is None:
                kind = _kind_of(row, path, i)
            for field in KINDS[kind][0]:
                if field not in row:
                    raise UserError(f"{path} line {i}: missing field {field!r}; every line of a "
                                    f"{kind} file needs {', '.join(KINDS[kind][0])}")
            if kind == "triplets":
                negs = row.get("negatives") or []
                if not isinstance(negs, list) or not all(isinstance(n, str) for n in negs):
                    raise UserError(f"{path} line {i}: 'negatives' must be a list of strings")
            if kind == "scored" and not isinstance(row["score"], (int, float)):
                raise UserError(f"{path} line {i}: 'score' must be a number, not "
                                f"{row['score']!r}")
            rows.append(row)
    if not rows:
        raise UserError(f"{path} holds no rows; write one JSON object per line")
    return kind, rows


def _kind_of(row: dict, path: str, line: int) -> str:
    if "query" in row:
        return "triplets"
    if "score" in row:
        return "scored"
    if "label" in row:
        return "labelled"
    if "text" in row:
        return "sentences"
    raise UserError(f"{path} line {line} has none of 'query', 'score', 'label', 'text'; write "
                    "{\"query\", \"positive\", \"negatives\"}, {\"text_a\", \"text_b\", "
                    "\"score\"|\"label\"} or {\"text\"} objects")


class Encoder:
    """Texts -> ([n, L] ids, [n, L] mask) padded to a fixed L, cut to L (a count of cut texts)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.cut = 0

    def __call__(self, texts: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
        body = length - self.tok.num_special(False)
        batch = getattr(self.tok, "encode_batch", None)
        pieces = batch(texts) if batch else [self.tok.encode(t) for t in texts]
        ids = np.full((len(texts), length), self.tok.pad_id, np.int32)
        mask = np.zeros((len(texts), length), np.int32)
        for i, p in enumerate(pieces):
            self.cut += len(p) > body
            seq = self.tok.build_inputs(list(p[:body]))[0]
            ids[i, :len(seq)] = seq
            mask[i, :len(seq)] = 1
        return ids, mask


def sentence_settings(cfg, log: Callable[[str], None] = lambda m: None) -> dict:
    """This run's pooling, normalisation and prompts: the config's, where it sets them, else the
    start model's (init_from a sentence-transformers directory or an embedding checkpoint), else
    mean pooling and no prompts. One logged line names what came from the start and what the
    config changed there.

    A setting the config makes explicitly wins over the start's, as in sentence-transformers,
    where a Pooling module of another mode over a model's Transformer, or the trainer's
    `prompts`, is how one fine-tunes with other settings: the checkpoint then records (and the
    export writes) what this run trained with. Normalisation is always the config's: with it
    off our losses score dot products, while sentence-transformers' losses take the cosine
    whether or not a Normalize module follows, so the start's module says nothing about how to
    train."""
    t = cfg.task
    init = str(cfg.init_from)
    stored = (st_interop.read_config(init) if init and os.path.isdir(init) else None) or {}
    theirs = stored.get("prompts") or {}
    pooling = str(t.pooling) or stored.get("pooling") or "mean"
    prompts, taken, changed = {}, [], []
    if stored and not str(t.pooling):
        taken.append(f"pooling {pooling!r}")
    elif stored and pooling != stored.get("pooling"):
        changed.append(f"pooling {pooling!r} (task.pooling; {stored.get('pooling')!r} there)")
    for side, key in (("query", "query_prefix"), ("document", "passage_prefix")):
        own, start = str(t[key]), str(theirs.get(side) or "")
        if own or not bool(t.prompts_from_start):
            prompts[side] = own
            if start and own != start:
                changed.append(f"{side} prompt {own!r} (task.{key}"
                               + ("" if own else ", task.prompts_from_start=false")
                               + f"; {start!r} there)")
        else:
            prompts[side] = start
            if start:
                taken.append(f"{side} prompt {start!r}")
    normalize = bool(t.normalize)
    if "normalize" in stored and bool(stored["normalize"]) != normalize:
        changed.append(f"normalize {normalize} (task.normalize; {stored['normalize']} there)")
    if taken or changed:
        log(f"sentence settings of {init}: "
            + "; ".join(([f"kept {', '.join(taken)}"] if taken else [])
                        + ([f"the config's {', '.join(changed)}"] if changed else [])))
    return {"pooling": pooling, "normalize": normalize, "prompts": prompts}


def sentence_config(cfg, sentence: dict) -> dict:
    """What the best checkpoint stores as sentence_config.json (embed, export read it)."""
    q = int(cfg.task.query_length) or int(cfg.data.max_seq_length)
    return {"pooling": sentence["pooling"], "normalize": sentence["normalize"],
            "max_seq_length": int(cfg.data.max_seq_length), "query_length": q,
            "prompts": dict(sentence["prompts"])}


def _objective(cfg, kind: str, num_negatives: int, sentence: dict):
    name = str(cfg.objective.name)
    allowed = KINDS[kind][2]
    if name == "auto":
        name = KINDS[kind][1]
    if name not in allowed:
        raise UserError(f"objective.name={name!r} does not train on {kind} data; use "
                        f"{' or '.join(allowed)} (or auto)")
    t = cfg.task
    return objectives.make(name, pooling=sentence["pooling"], normalize=sentence["normalize"],
                           temperature=float(t.temperature), symmetric=bool(t.symmetric),
                           directions=tuple(d.strip() for d in str(t.directions).split(",")
                                            if d.strip()),
                           scale=float(t.scale), num_negatives=num_negatives,
                           query_length=int(t.query_length), mini_batch=int(t.mini_batch))


def triplet_features(rows, enc: Encoder, prefixes, seq: int, qlen: int, n: int) -> dict:
    qp, pp = prefixes
    out = {}
    out["input_ids"], out["input_mask"] = enc([qp + r["query"] for r in rows], qlen)
    out["segment_ids"] = np.zeros_like(out["input_ids"])
    out["passage_ids"], out["passage_mask"] = enc([pp + r["positive"] for r in rows], seq)
    if n:
        texts, valid = [], np.zeros((len(rows), n), np.float32)
        for i, r in enumerate(rows):
            negs = list(r.get("negatives") or [])[:n]
            valid[i, :len(negs)] = 1.0
            texts += [pp + x for x in negs] + [""] * (n - len(negs))
        ids, mask = enc(texts, seq)
        out["negative_ids"] = ids.reshape(len(rows), n, seq)
        out["negative_mask"] = mask.reshape(len(rows), n, seq)
        out["negative_valid"] = valid
    return out


def pair_features(rows, enc: Encoder, prefix: str, seq: int, kind: str, labels=None) -> dict:
    out = {}
    out["input_ids"], out["input_mask"] = enc([prefix + r["text_a"] for r in rows], seq)
    out["segment_ids"] = np.zeros_like(out["input_ids"])
    out["b_ids"], out["b_mask"] = enc([prefix + r["text_b"] for r in rows], seq)
    if kind == "scored":
        out["scores"] = np.array([float(r["score"]) for r in rows], np.float32)
    else:
        out["labels"] = np.array([labels[r["label"]] for r in rows], np.int32)
    return out


def teacher_embeddings(teacher: str, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """[len(texts), D] float32: the teacher's embeddings, with its own tokenizer, length, prompt
    and pooling (a sentence-transformers directory's or an embedding checkpoint's; else CLS)."""
    # Orbax and the Hugging Face readers come with the loader (tests/test_imports.py: LAZY_OK).
    from bertjax.tools import embed

    pooling, normalize, stored_len, prefix = embed.sentence_settings(teacher)
    model, cfg, task = embed.load_with_adapter(teacher)
    tokenizer = embed.checkpoint_tokenizer(teacher, cfg.vocab_size)
    return embed.embed_texts(embed.encoder_of(model, task), tokenizer,
                             [prefix + t for t in texts], pooling, batch_size,
                             stored_len or cfg.max_length, normalize)


def model_inputs(ids: np.ndarray, mask: np.ndarray) -> dict:
    return {"input_ids": ids, "segment_ids": np.zeros_like(ids), "input_mask": mask}


def prepare(cfg, tokenizer, log: Callable[[str], None]) -> Prepared:
    t = cfg.task
    train_path, dev_path = task_path(cfg, "train_file"), task_path(cfg, "dev_file")
    kind, train_rows = read_jsonl(train_path)
    dev_kind, dev_rows = read_jsonl(dev_path)
    if dev_kind != kind:
        raise UserError(f"{dev_path} holds {dev_kind} rows but {train_path} holds {kind}; give a "
                        "dev file of the same kind")
    seq = int(cfg.data.max_seq_length)
    qlen = int(t.query_length) or seq
    if not 3 <= qlen <= seq:
        raise UserError(f"task.query_length must be between 3 and data.max_seq_length={seq}")
    sentence = sentence_settings(cfg, log)
    prefixes = (sentence["prompts"]["query"], sentence["prompts"]["document"])
    enc = Encoder(tokenizer)

    num_negatives, labels = 0, None
    if kind == "triplets":
        most = max(len(r.get("negatives") or []) for r in train_rows)
        num_negatives = most if int(t.num_negatives) < 0 else int(t.num_negatives)
    objective = _objective(cfg, kind, num_negatives, sentence)
    teacher = str(t.teacher)
    if bool(teacher) != (kind == "sentences"):
        raise UserError(f"task.teacher={teacher!r} with {kind} data: a teacher distils sentences "
                        "({\"text\"} rows) into the student, and sentence data needs one; set "
                        "both or neither")
    if kind == "labelled":
        labels = {v: i for i, v in enumerate(sorted({r["label"] for r in train_rows}, key=str))}
        unknown = sorted({str(r["label"]) for r in dev_rows if r["label"] not in labels})
        if unknown:
            raise UserError(f"{dev_path} has labels the training file has not: "
                            f"{', '.join(unknown[:5])}")

    if kind == "triplets":
        train = triplet_features(train_rows, enc, prefixes, seq, qlen, num_negatives)
        corpus_texts = sorted({x for r in dev_rows for x in [r["positive"],
                                                               *(r.get("negatives") or [])]})
        where = {x: i for i, x in enumerate(corpus_texts)}
        qrels = [{where[r["positive"]]: 1.0} for r in dev_rows]
        dev_q = model_inputs(*enc([prefixes[0] + r["query"] for r in dev_rows], qlen))
        dev_c = model_inputs(*enc([prefixes[1] + x for x in corpus_texts], seq))
        names = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100")

        def dev_metrics(predict) -> dict[str, float]:
            q, c = predict(dev_q)["embedding"], predict(dev_c)["embedding"]
            ranked, _ = retrieval.search(q, c, k=100)
            m = retrieval.retrieval_metrics(ranked, qrels)
            return {k: m[k] for k in names}
        best = "mrr@10"
    elif kind == "sentences":
        targets = teacher_embeddings(teacher, [r["text"] for r in train_rows + dev_rows])
        objective = dataclasses.replace(objective, dim=int(targets.shape[1]))
        train = {**model_inputs(*enc([prefixes[0] + r["text"] for r in train_rows], seq)),
                 "target": targets[:len(train_rows)]}
        dev_in = model_inputs(*enc([prefixes[0] + r["text"] for r in dev_rows], seq))
        dev_target = targets[len(train_rows):]
        names, best = ("mse_loss", "cosine"), "mse_loss"

        def dev_metrics(predict) -> dict[str, float]:
            emb = np.asarray(predict(dev_in)["embedding"], np.float32)
            norms = np.linalg.norm(emb, axis=1) * np.linalg.norm(dev_target, axis=1)
            return {"mse_loss": float(np.mean((emb - dev_target) ** 2)),
                    "cosine": float(np.mean(np.sum(emb * dev_target, 1)
                                            / np.maximum(norms, 1e-12)))}
        log(f"teacher {teacher}: {targets.shape[1]}-wide embeddings of {len(targets)} sentences")
    else:
        train = pair_features(train_rows, enc, prefixes[0], seq, kind, labels)
        dev = pair_features(dev_rows, enc, prefixes[0], seq, kind, labels)
        both = model_inputs(np.stack([dev["input_ids"], dev["b_ids"]], 1),
                            np.stack([dev["input_mask"], dev["b_mask"]], 1))
        if kind == "scored":
            names, best = ("spearman", "pearson"), "spearman"
        else:
            names, best = ("accuracy",), "accuracy"

        def dev_metrics(predict) -> dict[str, float]:
            out = predict(both)
            if kind == "scored":
                return {"spearman": retrieval.spearman(out["cosine"], dev["scores"]),
                        "pearson": retrieval.pearson(out["cosine"], dev["scores"])}
            return {"accuracy": float(np.mean(np.argmax(out["logits"], -1) == dev["labels"]))}

    if enc.cut:
        log(f"warning: {enc.cut} texts are longer than their length limit (data.max_seq_length="
            f"{seq}, task.query_length={qlen}) and were cut")
    log(f"embeddings ({kind}, {objective.name}): {len(train_rows)} train rows, {len(dev_rows)} dev "
        f"rows" + (f", {num_negatives} hard negatives per query" if num_negatives else ""))

    def write_outputs(predict, out_dir: str, write: bool) -> dict:
        return {"metrics": dev_metrics(predict), "files": []}

    extra = {SENTENCE_CONFIG: json.dumps(sentence_config(cfg, sentence), indent=2).encode()}
    if labels:
        extra["labels.json"] = json.dumps([str(k) for k in labels]).encode()
    return Prepared(name=f"embeddings-{kind}", objective=objective,
                    num_labels=len(labels) if labels else 0, train=train, metric_names=names,
                    default_best=best, evaluate=dev_metrics, write_outputs=write_outputs,
                    extra_files=extra)
