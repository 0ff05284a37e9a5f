"""Sentence embeddings from any BERT checkpoint: one vector per input line, saved as .npy.

bertjax embed --checkpoint=DIR --input=texts.txt --pooling=cls|mean --output=emb.npy

The checkpoint may be a bertjax checkpoint of any task (its encoder is used), a training workdir or
a Hugging Face BERT directory. Row i of the output is line i of the input (empty lines included, so
rows stay aligned with lines). "cls" is the final hidden state at [CLS], not the pooler output
(which exists only on some task models and is trained for NSP, not similarity); "mean" averages the
final hidden states of every real token, [CLS] and [SEP] included, as sentence-transformers does.

The loading and batching helpers here are shared with fill_mask and bertjax.api.
"""
from __future__ import annotations

import io
import os
import sys

import jax
import numpy as np
from absl import flags
from flax import nnx

from bertjax import cli
from bertjax.errors import UserError
from bertjax.interop import sentence_transformers as st_interop
from bertjax.model import sentence
from bertjax.store.files import write_atomic
from bertjax.load.model_files import ENCODER, checkpoint_tokenizer, load_checkpoint  # noqa: F401
from bertjax.load import lora_files

POOLINGS = ("cls", "mean", "last")
# Batches are padded to a power-of-two length no shorter than this, so a file of mixed lengths
# compiles a handful of shapes instead of one per batch.
MIN_BUCKET = 8


# --------------------------------------------------------------------------- loading


def encoder_of(model, task: str):
    """The BertModel inside a task model (a "base" model is one)."""
    return model if task == "base" else model.bert


# --------------------------------------------------------------------------- batching


def seq_limit(cfg, max_seq_length: int) -> int:
    """max_seq_length checked against the model's position table; 0 means the whole table."""
    limit = cfg.max_length
    max_seq_length = max_seq_length or limit
    if not 3 <= max_seq_length <= limit:
        raise UserError(f"max_seq_length must be between 3 and the model's limit {limit}, not "
                        f"{max_seq_length}")
    return max_seq_length


def encode_cut(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """encode_texts, with a warning on stderr saying how many texts were cut."""
    seqs, cut = encode_texts(tokenizer, texts, max_len)
    if cut:
        print(f"warning: {cut} of {len(texts)} texts are longer than max_seq_length="
              f"{max_len} tokens and were cut", file=sys.stderr)
    return seqs


def encode_texts(tokenizer, texts: list[str], max_len: int) -> tuple[list[list[int]], int]:
    """tokenizer.build_inputs(pieces) per text ([CLS] pieces [SEP], <s> pieces </s>), cut to
    max_len. Returns (id lists, how many were cut)."""
    body = max_len - tokenizer.num_special(False)
    batch = getattr(tokenizer, "encode_batch", None)
    pieces = batch(texts) if batch else [tokenizer.encode(t) for t in texts]
    cut = sum(len(p) > body for p in pieces)
    return [tokenizer.build_inputs(p[:body])[0] for p in pieces], cut


def bucket_length(longest: int, limit: int) -> int:
    n = MIN_BUCKET
    while n < longest:
        n *= 2
    return min(n, limit)


def pack(seqs: list[list[int]], length: int, rows: int, pad_id: int):
    """Single-segment id lists -> (input_ids, segment_ids, input_mask), [rows, length] int32;
    rows beyond len(seqs) are padding rows the caller drops."""
    ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return ids, np.zeros_like(ids), mask


# --------------------------------------------------------------------------- embedding


def _pool(graphdef, pooling: str, normalize: bool, state, ids, seg, mask):
    seq, _ = nnx.merge(graphdef, state)(ids, seg, mask)
    emb = sentence.pool(seq, mask, pooling)
    return sentence.l2_normalize(emb) if normalize else emb


_jitted_pool = None


def make_pooler(encoder, pooling: str, normalize: bool = False):
    """(ids, seg, mask) -> [B, H] float32 embeddings of `encoder`. One jitted function serves every
    call: models of one structure and batches of one shape share a compilation."""
    global _jitted_pool
    if pooling not in POOLINGS:
        raise UserError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    if _jitted_pool is None:
        _jitted_pool = jax.jit(_pool, static_argnums=(0, 1, 2))
    graphdef, state = nnx.split(encoder)
    return lambda ids, seg, mask: np.asarray(_jitted_pool(graphdef, pooling, bool(normalize), state,
                                                          ids, seg, mask))


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, not {batch_size}")


def embed_texts(encoder, tokenizer, texts: list[str], pooling: str = "cls", batch_size: int = 32,
                max_seq_length: int = 128, normalize: bool = False) -> np.ndarray:
    """[len(texts), hidden] float32 embeddings, L2-normalised if `normalize`; texts longer than
    max_seq_length are cut (a warning on stderr says how many)."""
    check_batch_size(batch_size)
    max_seq_length = seq_limit(encoder.config, max_seq_length)
    seqs = encode_cut(tokenizer, texts, max_seq_length)
    run = make_pooler(encoder, pooling, normalize)
    # Longest first: similar lengths share a batch (less padding), and a batch too large for
    # memory fails at once rather than at the end.
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    rows = min(batch_size, len(seqs))
    out = np.zeros((len(seqs), encoder.config.hidden_size), np.float32)
    for start in range(0, len(order), rows):
        idx = order[start:start + rows]
        chunk = [seqs[i] for i in idx]
        length = bucket_length(len(chunk[0]), max_seq_length)
        out[idx] = run(*pack(chunk, length, rows, tokenizer.pad_id))[:len(idx)]
    return out


# --------------------------------------------------------------------------- files


def read_texts(path: str) -> list[str]:
    """One text per line (UTF-8, a leading BOM and CRLF line ends accepted)."""
    if not os.path.isfile(path):
        raise UserError(f"input file {path} does not exist; pass a UTF-8 text file with one text "
                        "per line")
    with open(path, "rb") as f:
        raw = f.read()
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    texts = []
    for i, line in enumerate(lines, 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path} line {i} is not valid UTF-8 (byte 0x{line[e.start]:02x} at "
                            f"column {e.start + 1}); re-encode the file as UTF-8") from None
        texts.append(text.removesuffix("\r"))
    if texts:
        texts[0] = texts[0].removeprefix("\ufeff")
    if not texts:
        raise UserError(f"input file {path} is empty; write one text per line")
    return texts


def save_npy(path: str, array: np.ndarray) -> None:
    """np.save under a temporary name in the target directory, renamed once complete."""
    if os.path.isdir(path):
        raise UserError(f"--output {path} is a directory; give a file name such as emb.npy")
    buf = io.BytesIO()
    np.save(buf, array)
    write_atomic(path, buf.getvalue())


def sentence_settings(checkpoint: str, pooling: str = "", prompt: str = ""):
    """(pooling, normalize, max_seq_length or 0, prefix): what a sentence-transformers directory
    or a checkpoint fine-tuned for embeddings (sentence_config.json) says, unless `pooling` is
    given; else CLS, not normalised. `prompt` names one of its prompts (query, document)."""
    stored = st_interop.read_config(checkpoint) or {}
    if pooling and pooling not in POOLINGS:
        raise UserError(f"--pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    prompts = stored.get("prompts") or {}
    if prompt and prompt not in prompts:
        raise UserError(f"--prompt={prompt!r} is not one of the checkpoint's prompts "
                        f"({', '.join(prompts) or 'none'})")
    if pooling:
        return pooling, False, 0, prompts.get(prompt, "")
    return (stored.get("pooling", "cls"), bool(stored.get("normalize", False)),
            int(stored.get("max_seq_length") or 0), prompts.get(prompt, ""))


def load_with_adapter(checkpoint: str, adapter: str | None = None):
    """(model, cfg, task) of `checkpoint`, with LoRA adapters over it when `adapter` names a
    LoRA checkpoint or a PEFT directory (load/lora_files.py)."""
    model, cfg, task = load_checkpoint(checkpoint, needs=ENCODER)
    if adapter:
        model, cfg, task = lora_files.attach(model, cfg, adapter, checkpoint)
    return model, cfg, task


def embed_file(checkpoint: str, input_path: str, output_path: str, pooling: str = "",
               batch_size: int = 32, max_seq_length: int = 0, vocab: str | None = None,
               prompt: str = "", adapter: str | None = None) -> np.ndarray:
    """Embeds every line of input_path and saves [N, H] float32 to output_path.
    pooling "" means the checkpoint's sentence settings (else cls); max_seq_length 0 means
    the checkpoint's (a sentence-transformers max_seq_length) else the model's limit. With
    `adapter`, LoRA adapters run over the checkpoint, with the sentence settings stored beside
    them."""
    pooling, normalize, stored_len, prefix = sentence_settings(adapter or checkpoint, pooling,
                                                               prompt)
    texts = [prefix + t for t in read_texts(input_path)]
    model, cfg, task = load_with_adapter(checkpoint, adapter)
    tokenizer = checkpoint_tokenizer(checkpoint, cfg.vocab_size, vocab)
    emb = embed_texts(encoder_of(model, task), tokenizer, texts, pooling, batch_size,
                      max_seq_length or stored_len or cfg.max_length, normalize)
    save_npy(output_path, emb)
    return emb


def define_flags() -> None:
    # Defined only when run as a command: the functions above are imported by fill_mask and tests,
    # and absl refuses a flag name defined by two modules in one process.
    flags.DEFINE_string("checkpoint", None,
                        "bertjax checkpoint, training workdir or HF BERT directory.")
    flags.DEFINE_string("input", None, "UTF-8 text file, one text per line.")
    flags.DEFINE_string("output", None, "Where to write the [N, hidden] float32 .npy file.")
    flags.DEFINE_enum("pooling", "", ["", *POOLINGS],
                      "cls: final hidden state at [CLS]; mean: average over real tokens; last: "
                      "the last real token; \"\" = the checkpoint's (a sentence-transformers "
                      "directory's or a fine-tuned embedding model's, normalised as it says), "
                      "else cls.")
    flags.DEFINE_string("prompt", "", "A prompt the checkpoint stores (query, document), put "
                        "before every text.")
    flags.DEFINE_integer("batch_size", 32, "Texts per forward pass.")
    flags.DEFINE_integer("max_seq_length", 0, "Tokens per text incl. [CLS]/[SEP]; longer texts "
                         "are cut. 0 = the model's limit.")
    flags.DEFINE_string("vocab", None, "Vocabulary to use when none is stored with the checkpoint.")
    flags.DEFINE_string("adapter", None, "LoRA adapters to run over --checkpoint: a bertjax LoRA "
                        "checkpoint (fine-tuned with lora.enabled=true) or a PEFT directory.")


FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])}; texts go in the --input file")
    for name in ("checkpoint", "input", "output"):
        if not getattr(FLAGS, name):
            raise UserError(f"--{name} is required: bertjax embed --checkpoint=DIR "
                            "--input=texts.txt --output=emb.npy")
    emb = embed_file(FLAGS.checkpoint, FLAGS.input, FLAGS.output, FLAGS.pooling, FLAGS.batch_size,
                     FLAGS.max_seq_length, FLAGS.vocab, FLAGS.prompt, FLAGS.adapter)
    pooling = sentence_settings(FLAGS.adapter or FLAGS.checkpoint, FLAGS.pooling)[0]
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} {pooling}-pooled embeddings to {FLAGS.output}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
