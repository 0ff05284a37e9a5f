"""Toy JSONL data for the embedding tests: each query names one of a few "topics" (a city) and its
positive shares the city, so in-batch negatives (other cities) can be told apart after a few
steps. Nothing here needs the network."""
from __future__ import annotations

import json
import os
import random

import toy_tasks as toy


def _text(rng: random.Random, city: str, n: int = 4) -> str:
    words = [rng.choice(toy.FILLER) for _ in range(n)]
    words.insert(rng.randrange(n + 1), city)
    return " ".join(words)


def write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def triplets(n: int, seed: int, negatives: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        city = rng.choice(toy.CITIES)
        others = [c for c in toy.CITIES if c != city]
        rows.append({"query": _text(rng, city), "positive": _text(rng, city),
                     "negatives": [_text(rng, rng.choice(others)) for _ in range(negatives)]})
    return rows


def scored_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice(toy.CITIES), rng.choice(toy.CITIES)
        rows.append({"text_a": _text(rng, a), "text_b": _text(rng, b),
                     "score": 1.0 if a == b else 0.0})
    return rows


def labelled_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice(toy.CITIES), rng.choice(toy.CITIES)
        rows.append({"text_a": _text(rng, a), "text_b": _text(rng, b),
                     "label": "same" if a == b else "different"})
    return rows


def write_task(root: str, kind: str = "triplets", n_train: int = 64, n_dev: int = 24) -> dict:
    make = {"triplets": triplets, "scored": scored_pairs, "labelled": labelled_pairs}[kind]
    os.makedirs(root, exist_ok=True)
    return {"train_file": write_jsonl(os.path.join(root, "train.jsonl"), make(n_train, 0)),
            "dev_file": write_jsonl(os.path.join(root, "dev.jsonl"), make(n_dev, 1))}
