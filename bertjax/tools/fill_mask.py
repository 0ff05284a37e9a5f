"""Top candidates for each [MASK] in a text, from a checkpoint's masked-LM head.

bertjax fill-mask --checkpoint=DIR [--top_k=5] [--json] "the [MASK] sat on the mat ." ...

Needs a model with its MLM head: a bertjax pretraining checkpoint or training workdir, or a Hugging
Face BertForPreTraining / BertForMaskedLM directory. Probabilities are a softmax over the whole
output layer, as Hugging Face's fill-mask pipeline computes them.
"""
from __future__ import annotations

import json

import jax
import numpy as np
from absl import flags
from flax import nnx

from bertjax import cli
from bertjax.load.model_files import ENCODER, checkpoint_tokenizer, load_checkpoint
from bertjax.tools.embed import bucket_length
from bertjax.errors import UserError

MASK = "[MASK]"
# Batches stay small: a prompt list is short, and each row's logits are [masks, vocab].
BATCH = 16


def check_mlm_task(checkpoint: str, task: str) -> None:
    if task not in ("pretraining", "masked_lm"):
        raise UserError(f"{checkpoint} holds a {task} model, which has no masked-LM head; "
                        "fill_mask needs a pretraining or masked-LM checkpoint")


def load_mlm_model(checkpoint: str, vocab: str | None = None):
    """(model, cfg, tokenizer) for a checkpoint that carries a masked-LM head."""
    model, cfg, task = load_checkpoint(checkpoint, needs=(*ENCODER, "mlm"))
    check_mlm_task(checkpoint, task)
    return model, cfg, checkpoint_tokenizer(checkpoint, cfg.vocab_size, vocab)


def require_masks(texts: list[str]) -> None:
    for n, text in enumerate(texts, 1):
        if MASK not in text:
            raise UserError(f"text {n} has no {MASK} ({text[:60]!r}); write {MASK} (upper case, "
                            "with brackets) where a word should be predicted")


def _encode(tokenizer, texts: list[str], limit: int) -> list[list[int]]:
    require_masks(texts)
    seqs = []
    for n, text in enumerate(texts, 1):
        parts = text.split(MASK)
        # The text around each [MASK] is encoded on its own: a tokenizer that lower-cases before
        # its model sees the text (SentencePiece with lower_case) would otherwise split the
        # special token, and WordPiece splits the text there anyway. The space before a mask is
        # dropped, as RoBERTa's <mask> (lstrip) drops it; WordPiece and SentencePiece ignore it.
        body = tokenizer.encode(parts[0].rstrip() if len(parts) > 1 else parts[0])
        for k, part in enumerate(parts[1:], 2):
            body += [tokenizer.mask_id,
                     *tokenizer.encode(part.rstrip() if k < len(parts) else part)]
        ids, _ = tokenizer.build_inputs(body)
        if len(ids) > limit:
            raise UserError(f"text {n} is {len(ids)} tokens long with [CLS]/[SEP]; the model takes "
                            f"at most {limit}, shorten it")
        seqs.append(ids)
    return seqs


def _probs(graphdef, state, ids, seg, mask, positions):
    out = nnx.merge(graphdef, state)(ids, seg, mask, positions)
    return jax.nn.softmax(out["mlm_logits"], axis=-1)


_jitted_probs = None


def make_predictor(model):
    """(ids, seg, mask, positions) -> [B, P, vocab] probabilities. One jitted function serves every
    call, so models of one structure and batches of one shape share a compilation."""
    global _jitted_probs
    if _jitted_probs is None:
        _jitted_probs = jax.jit(_probs, static_argnums=0)
    graphdef, state = nnx.split(model)
    return lambda *batch: np.asarray(_jitted_probs(graphdef, state, *batch))


def fill_mask(model, tokenizer, texts: list[str], top_k: int = 5) -> list[list[dict]]:
    """For each text, one entry per [MASK] in order: {"position": token index incl. [CLS],
    "candidates": [{"token", "id", "prob"}, ...]} with the top_k tokens, most probable first."""
    if top_k < 1:
        raise UserError(f"top_k must be at least 1, not {top_k}")
    if not texts:
        raise UserError(f'give at least one text containing {MASK}, e.g. "the {MASK} sat down ."')
    cfg = model.bert.config
    seqs = _encode(tokenizer, texts, cfg.max_length)
    predict = make_predictor(model)
    # Only ids the tokenizer knows can be shown; a model's table may be padded beyond them.
    k = min(top_k, tokenizer.vocab_size)
    results = []
    for start in range(0, len(seqs), BATCH):
        chunk = seqs[start:start + BATCH]
        rows = len(chunk)
        length = bucket_length(max(map(len, chunk)), cfg.max_length)
        where = [[i for i, t in enumerate(s) if t == tokenizer.mask_id] for s in chunk]
        slots = max(map(len, where))
        ids = np.full((rows, length), tokenizer.pad_id, np.int32)
        mask = np.zeros((rows, length), np.int32)
        positions = np.zeros((rows, slots), np.int32)
        for r, (s, w) in enumerate(zip(chunk, where)):
            ids[r, :len(s)] = s
            mask[r, :len(s)] = 1
            positions[r, :len(w)] = w
        probs = predict(ids, np.zeros_like(ids), mask, positions)[..., :tokenizer.vocab_size]
        for r, w in enumerate(where):
            entries = []
            for j, pos in enumerate(w):
                # A stable sort keeps the lower id first on an exact tie, as torch.topk does.
                top = np.argsort(-probs[r, j], kind="stable")[:k]
                tokens = tokenizer.convert_ids_to_tokens(top.tolist())
                entries.append({"position": pos, "candidates": [
                    {"token": t, "id": int(i), "prob": float(probs[r, j, i])}
                    for t, i in zip(tokens, top)]})
            results.append(entries)
    return results


def format_text(texts: list[str], results: list[list[dict]]) -> str:
    lines = []
    for text, entries in zip(texts, results):
        lines.append(text)
        for n, e in enumerate(entries, 1):
            shown = "  ".join(f"{c['token']} {c['prob']:.4f}" for c in e["candidates"])
            lines.append(f"  {MASK} {n} (token {e['position']}): {shown}")
    return "\n".join(lines)


def format_json(texts: list[str], results: list[list[dict]]) -> str:
    return "\n".join(json.dumps({"text": t, "masks": r}, ensure_ascii=False)
                     for t, r in zip(texts, results))


def define_flags() -> None:
    # Only when run as a command: tests import this module beside others defining --checkpoint.
    flags.DEFINE_string("checkpoint", None, "Pretraining checkpoint, workdir or HF BERT directory.")
    flags.DEFINE_integer("top_k", 5, "Candidates shown per [MASK].")
    flags.DEFINE_bool("json", False, "Print one JSON object per text instead of a table.")
    flags.DEFINE_string("vocab", None, "Vocabulary to use when none is stored with the checkpoint.")


FLAGS = flags.FLAGS


def main(argv):
    texts = argv[1:]
    if not FLAGS.checkpoint:
        raise UserError(f'--checkpoint is required: bertjax fill-mask --checkpoint=DIR '
                        f'"the {MASK} sat down ."')
    if not texts:
        raise UserError(f'give at least one text containing {MASK} after the flags, e.g. '
                        f'"the {MASK} sat down ."')
    require_masks(texts)  # before the model loads, so a forgotten [MASK] fails at once
    model, _, tokenizer = load_mlm_model(FLAGS.checkpoint, FLAGS.vocab)
    results = fill_mask(model, tokenizer, texts, FLAGS.top_k)
    print((format_json if FLAGS.json else format_text)(texts, results))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
