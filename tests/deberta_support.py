"""A DeBERTa-v2 Hugging Face directory as transformers writes one (save_pretrained), with a
SentencePiece spm.model trained here on the toy tasks' words (DeBERTa's [PAD] [UNK] [CLS] [SEP]
[MASK] pieces included), so that bertjax reads it and AutoTokenizer loads it as a
DebertaV2Tokenizer."""
from __future__ import annotations

import json
import os
import random
import shutil

import torch
import transformers

import toy_tasks as toy

# v3's knobs at toy sizes: 16 log buckets spanning 32, so sequences of 32 and more reach past
# the exact range.
KNOBS = dict(relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
             position_buckets=16, max_relative_positions=32, norm_rel_ebd="layer_norm",
             share_att_key=True, layer_norm_eps=1e-7, type_vocab_size=0)


def toy_texts(seed=0, n=400):
    """Sentences in the toy tasks' words (cased names too), to train a vocabulary that covers
    their data."""
    rng = random.Random(seed)
    words = toy.TOY_WORDS + [w.capitalize() for w in toy.NAMES + toy.CITIES + toy.ORGS]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + rng.choice(".?!")
            for _ in range(n)]


def train_spm(directory: str, vocab_size: int = 200) -> str:
    """A cased SentencePiece vocabulary trained by bertjax on toy_texts; returns its directory."""
    from bertjax.text.train_vocab import train_vocab

    os.makedirs(directory, exist_ok=True)
    corpus = os.path.join(directory, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(toy_texts()) + "\n")
    out = os.path.join(directory, "spm")
    train_vocab(corpus, "sentencepiece", vocab_size, out, lower_case=False, fmt="text")
    return out


def deberta_dir(root: str, cls=transformers.DebertaV2ForMaskedLM, hidden=32, layers=1,
                heads=2, seed=0) -> tuple[str, torch.nn.Module]:
    """(directory, model): `cls` with random, perturbed weights saved by transformers, beside an
    spm.model and a tokenizer_config.json naming DebertaV2Tokenizer."""
    spm_dir = train_spm(os.path.join(root, "vocab"))
    with open(os.path.join(spm_dir, "spiece.vocab"), encoding="utf-8") as f:
        vocab_size = sum(1 for _ in f)
    torch.manual_seed(seed)
    config = transformers.DebertaV2Config(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=2 * hidden + 1, max_position_embeddings=128,
        pad_token_id=0, **KNOBS)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = os.path.join(root, "hf")
    model.save_pretrained(path)
    shutil.copy(os.path.join(spm_dir, "spiece.model"), os.path.join(path, "spm.model"))
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False,
                   "model_max_length": 128}, f)
    return path, model
