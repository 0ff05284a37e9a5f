"""`make demo`: the whole product on an embedded default, from an empty directory, in minutes.

Stages (each one a bertjax command, its output in DIR/logs/<stage>.log; a rerun starts over):
1. corpus: gensim's Wikipedia sample, and Debian wordnet-base's noun glosses (each synset's
   definition and its example sentences as one unlabelled document; the fine-tuning dev
   definitions are left out);
2. a labelled set: WordNet noun definitions and their topic (25 lexicographer categories), few
   labelled examples (where pretraining should matter most) and a larger dev set;
3. vocabulary: WordPiece, `train_vocab --exact` (ties broken by text, so every clone gets the
   same bytes);
4. prepared data at sequence 64; 5. pretraining (configs/demo.py); 6. held-out MLM/NSP against
   the most-frequent-token baseline and chance; 7. Hugging Face export, and fill-mask
   completions on held-out sentences from the exported directory loaded in transformers;
8. fine-tuning from the pretrained checkpoint and from a random initialisation, 5 seeds each;
9. the report: DIR/report.json, DIR/report.png and a summary.
One progress line with an ETA covers all of it.

--pretrain_style bert (the default) pairs sentences for NSP; roberta packs full sentences across
documents without NSP (so the run is MLM only) and masks them dynamically: those two change only
the prepared data (PREPARE_FLAGS). electra takes roberta's data and pretrains the same-size
discriminator with replaced-token detection and a 1/4-width generator, for as many steps as give
the MLM run's training FLOPs (configs/demo.py:electra). --reuse_data_from=DIR takes the corpus, the labelled set and
the vocabulary from another demo workdir instead of building them. bertjax/demo/compare.py runs
both styles and compares them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter

from absl import flags, logging

from bertjax import cli
from bertjax.data import records
from bertjax.errors import UserError, user_errors_exit
from bertjax.finetuning.run import mean_std
from bertjax.load import model_files
from bertjax.store import workdir as wd
from bertjax.train.metrics import format_duration, read_jsonl


def define_flags() -> None:
    """Called by the command only (see cli.run)."""
    flags.DEFINE_string("workdir", "demo_out", "Where everything goes.")
    flags.DEFINE_integer("pretrain_steps", 0, "Pretraining steps (0 = configs/demo.py's).")
    flags.DEFINE_integer("finetune_seeds", 5, "Seeds per initialisation in the fine-tuning comparison.")
    flags.DEFINE_integer("n_train", 500, "Labelled training definitions.")
    flags.DEFINE_integer("n_dev", 1000, "Dev definitions.")
    flags.DEFINE_float("finetune_epochs", 10.0, "Fine-tuning epochs per run.")
    flags.DEFINE_float("finetune_lr", 1e-4, "Fine-tuning peak learning rate (both arms).")
    flags.DEFINE_bool("skip_finetune", False, "Stop after pretraining and export.")
    flags.DEFINE_bool("skip_random_init", False, "Fine-tune from the pretrained checkpoint only "
                      "(the random-init arm does not depend on pretraining; compare.py runs it "
                      "once).")
    flags.DEFINE_enum("pretrain_style", "bert", list(PREPARE_FLAGS),
                      "bert: sentence pairs, MLM+NSP; roberta: full sentences packed across "
                      "documents, no NSP (MLM only), dynamic masks (changes only prepare's flags); "
                      "electra: roberta's data, replaced-token detection at the MLM run's FLOPs "
                      "(configs/demo.py:electra); sop: ALBERT's sentence-order pairs, MLM+SOP "
                      "(changes only prepare's flags).")
    flags.DEFINE_string("reuse_data_from", "", "A finished demo workdir whose corpus, labelled set "
                        "and vocabulary this run uses instead of building its own.")


FLAGS = flags.FLAGS
VOCAB_SIZE = 8000
SEQ, PREDS = 64, 10
FINETUNE_SEQ = 32
# What --pretrain_style changes: prepare's flags for (training data, held-out data). Both styles
# mask 15% of the tokens with the same rule, at the same S and P, from the same text.
# bert: sentence pairs for NSP. Its training data is marked dynamic but read for under one epoch
#   (600 x 64 of 54,841 instances), so every sequence has one mask, as static data would.
# roberta: FULL-SENTENCES (prepare --no_nsp packs sentences up to S, a document boundary is a
#   [SEP]; no pairs, so pretraining is MLM only) and masks drawn anew each epoch (dynamic).
# Held-out data has static masks in both, so every evaluation scores the same positions.
PREPARE_FLAGS = {
    "bert": (["--masking=dynamic", "--dupe_factor=1"], ["--masking=static", "--dupe_factor=2"]),
    "roberta": (["--masking=dynamic", "--dupe_factor=1", "--no_nsp"],
                ["--masking=static", "--dupe_factor=2", "--no_nsp"]),
}
# electra: roberta's data (ELECTRA has no NSP, and its step draws its own masks), pretrained with
# replaced-token detection at the MLM arm's training FLOPs (configs/demo.py:electra).
PREPARE_FLAGS["electra"] = PREPARE_FLAGS["roberta"]
PRETRAIN_CONFIG = {"electra": "configs/demo.py:electra"}
# electra_gdes, electra_none: the electra arm with DeBERTa-v3's gradient-disentangled embedding
# sharing or with separate embeddings (the v3 paper's sharing ablation), at the same FLOPs.
for _arm in ("electra_gdes", "electra_none"):
    PREPARE_FLAGS[_arm] = PREPARE_FLAGS["roberta"]
    PRETRAIN_CONFIG[_arm] = f"configs/demo.py:{_arm}"
# sop: ALBERT's sentence-order pairs (prepare --pair_task=sop: both segments from one document,
# swapped half the time) instead of next-sentence pairs; the objective follows the data
# (mlm_sop), the model, optimizer and budget are the bert arm's, so only the pair task differs.
PREPARE_FLAGS["sop"] = tuple(flags_ + ["--pair_task=sop"] for flags_ in PREPARE_FLAGS["bert"])
# Expected seconds per stage on an idle 2-core box, measured (docs/benchmarks.md); only the ETA
# uses them, scaled by how fast this machine turns out to be.
STAGES = (("corpus", 10), ("labelled", 4), ("vocab", 25), ("prepare", 8), ("pretrain", 330),
          ("evaluate", 2), ("export", 12), ("finetune", 400), ("report", 3))
_STEP = re.compile(r"step\s+(\d+)/(\d+)")


class Progress:
    """One line for the whole demo: stage, share done, elapsed and ETA. Rewritten in place on a
    terminal; on a pipe a new line every 20 s so logs stay short."""

    def __init__(self, seeds: int, inits: int = 2) -> None:
        self.start = time.monotonic()
        self.total = sum(w for _, w in STAGES)
        self.done = 0.0
        self.stage, self.frac, self.detail = "", 0.0, ""
        # Fine-tuning trains inits x seeds runs, one command per initialisation; each run counts
        # its steps from the start again, which is how a new run is recognised.
        self.runs, self.run, self._prev = inits * seeds, 0, 0
        self.tty = sys.stdout.isatty()
        self._last = 0.0
        self._lock = threading.Lock()

    def begin(self, stage: str) -> None:
        self.stage, self.frac, self.detail = stage, 0.0, ""
        self.show(force=True)

    def end(self) -> None:
        self.done += dict(STAGES)[self.stage]
        self.frac = 0.0

    def line(self, text: str) -> None:
        m = _STEP.search(text)
        if m:
            x, y = int(m.group(1)), int(m.group(2))
            if self.stage == "finetune":
                if x < self._prev:
                    self.run = min(self.run + 1, self.runs - 1)
                self._prev = x
                self.frac = min(1.0, (self.run + x / max(y, 1)) / self.runs)
                self.detail = f"run {self.run + 1}/{self.runs} step {x}/{y}"
            else:
                self.frac, self.detail = x / max(y, 1), f"step {x}/{y}"
        self.show()

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (1.0 if self.tty else 20.0):
            return
        self._last = now
        share = (self.done + dict(STAGES).get(self.stage, 0) * self.frac) / self.total
        elapsed = now - self.start
        eta = f"eta {format_duration(elapsed * (1 - share) / share)}" if share > 0.02 else "eta ?"
        names = [n for n, _ in STAGES]
        k = names.index(self.stage) + 1 if self.stage in names else 0
        text = (f"demo {100 * share:3.0f}% | {k}/{len(STAGES)} {self.stage} {self.detail}".rstrip()
                + f" | {format_duration(elapsed)} elapsed | {eta}")
        with self._lock:
            if self.tty:
                sys.stdout.write("\r\033[K" + text)
            else:
                sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def say(self, text: str) -> None:
        """A result worth its own line (the progress line is redrawn under it)."""
        with self._lock:
            sys.stdout.write(("\r\033[K" if self.tty else "") + text + "\n")
            sys.stdout.flush()
        self.show(force=True)


def _run(progress: Progress, logs: str, name: str, *args: str) -> str:
    """Runs one bertjax command as a user would, its output into logs/<name>.log."""
    cmd = [sys.executable, "-m", *args]
    os.makedirs(logs, exist_ok=True)
    path = os.path.join(logs, f"{name}.log")
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # a pipe would otherwise hold lines back
    lines = []
    with open(path, "w") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                  stderr=subprocess.STDOUT, text=True,
                                                  bufsize=1, env=env) as proc:
        log.write("$ " + " ".join(cmd[2:]) + "\n")
        for line in proc.stdout:
            log.write(line)
            log.flush()
            lines.append(line)
            progress.line(line)
    if proc.returncode != 0:
        tail = "".join(lines[-15:])
        progress.say(f"--- last lines of {path} ---\n{tail}")
        raise UserError(f"demo stage {name} failed: {args[0]} exited {proc.returncode}; "
                        f"the whole log is {path}")
    return "".join(lines)


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def most_frequent_token_baseline(data_dir: str) -> dict:
    """Accuracy of always predicting the most frequent masked target of the held-out data (static
    masks), over all its records. Read with NumPy: TensorFlow would print its start-up lines
    into the demo's output."""
    meta = json.load(open(os.path.join(data_dir, "metadata.json")))
    dtype = records.dtype_from_metadata(meta)
    counts: Counter = Counter()
    total = 0
    for shard in meta["shards"]:
        rows = records.read_shard(os.path.join(data_dir, shard["file"]), dtype)
        for masked, n in zip(rows["masked_ids"], rows["num_masked"]):
            counts.update(masked[:n].tolist())
            total += int(n)
    token, n = counts.most_common(1)[0]
    return {"token_id": int(token), "accuracy": n / total, "masked_tokens": total}


def fill_mask_examples(hf_dir: str, heldout_file: str, k: int = 4, top: int = 3) -> list[dict]:
    """Masks one word in each of the first k suitable held-out sentences and asks the exported
    directory, loaded by transformers itself, for its top completions."""
    import torch  # torch and transformers: requirements-dev.txt, only for this check of the export
    import transformers

    transformers.logging.set_verbosity_error()  # its loading bars would break the progress line
    transformers.logging.disable_progress_bar()
    tok = transformers.BertTokenizerFast.from_pretrained(hf_dir)
    # The MLM head of whatever was exported: BERT's cls.predictions, RoBERTa's, ELECTRA's
    # generator.
    model = transformers.AutoModelForMaskedLM.from_pretrained(hf_dir).eval()
    vocab = tok.get_vocab()
    out = []
    with open(heldout_file, encoding="utf-8") as f:
        sentences = [s.strip() for s in f if 8 <= len(s.split()) <= 22]
    for sentence in sentences:
        words = sentence.split()
        # The longest word the vocabulary holds whole (so one [MASK] stands for it), not the first.
        cands = [i for i, w in enumerate(words[1:], 1) if w.isalpha() and len(w) >= 4
                 and w.lower() in vocab]
        if not cands:
            continue
        i = max(cands, key=lambda j: (len(words[j]), -j))
        masked = " ".join(words[:i] + [tok.mask_token] + words[i + 1:])
        enc = tok(masked, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0]
        pos = int((enc["input_ids"][0] == tok.mask_token_id).nonzero()[0, 0])
        probs = torch.softmax(logits[pos], -1)
        p, ids = probs.topk(top)
        answer_id = vocab[words[i].lower()]
        out.append({"text": masked, "answer": words[i].lower(),
                    "answer_rank": int((probs > probs[answer_id]).sum()) + 1,
                    "top": [[tok.convert_ids_to_tokens(int(t)), round(float(q), 4)]
                            for t, q in zip(ids, p)]})
        if len(out) == k:
            break
    return out


def _data_stages(progress, logs, corpus, labelled, data, w, style="bert", reuse=""):
    """Corpus, labelled set, vocabulary (or those of the demo workdir `reuse`) and prepared
    shards; returns what pretraining and fine-tuning read."""
    if reuse:
        corpus, labelled, vocab = (os.path.join(reuse, d) for d in ("corpus", "wordnet", "vocab"))
        for need in (os.path.join(labelled, "stats.json"), os.path.join(vocab, "vocab.txt"),
                     os.path.join(corpus, "heldout")):
            if not os.path.exists(need):
                raise UserError(f"--reuse_data_from={reuse} has no {need}; give a demo workdir "
                                "whose data stages finished")
        for stage in ("corpus", "labelled", "vocab"):
            progress.begin(stage)
            progress.end()
        progress.say(f"corpus, labelled set and vocabulary: those of {reuse}")
    else:
        vocab = _build_data(progress, logs, corpus, labelled, w)
    texts = f"{corpus}/wiki-*.txt,{corpus}/gloss/gloss-*.txt"
    progress.begin("prepare")
    train_dir, heldout_dir = prepare_stage(progress, logs, texts, f"{corpus}/heldout/*.txt", vocab,
                                           data, style)
    progress.end()
    vocab_size = json.load(open(os.path.join(train_dir, "metadata.json")))["tokenizer"]["vocab_size"]
    return corpus, labelled, vocab, train_dir, heldout_dir, vocab_size


def _build_data(progress, logs, corpus, labelled, w) -> str:
    progress.begin("corpus")
    _run(progress, logs, "corpus", "bertjax.demo.corpus", f"--out={corpus}")
    progress.end()
    progress.begin("labelled")
    _run(progress, logs, "labelled", "bertjax.demo.wordnet", f"--out={labelled}",
         f"--n_train={FLAGS.n_train}", f"--n_dev={FLAGS.n_dev}",
         f"--gloss_out={corpus}/gloss")
    progress.end()
    texts = f"{corpus}/wiki-*.txt,{corpus}/gloss/gloss-*.txt"
    progress.begin("vocab")
    vocab = os.path.join(w, "vocab")
    _run(progress, logs, "vocab", "bertjax.text.train_vocab", f"--input={texts}",
         "--kind=wordpiece", "--exact", f"--vocab_size={VOCAB_SIZE}", f"--out={vocab}")
    progress.end()
    return vocab


def prepare_stage(progress, logs, texts: str, heldout: str, vocab: str, data: str,
                  style: str) -> tuple[str, str]:
    """`bertjax prepare` of the training and the held-out text in `style` (PREPARE_FLAGS);
    returns (train_dir, heldout_dir) under `data`."""
    train_flags, heldout_flags = PREPARE_FLAGS[style]
    common = [f"--vocab={vocab}", f"--max_seq_length={SEQ}", f"--max_predictions_per_seq={PREDS}",
              "--seed=0"]
    train_dir, heldout_dir = os.path.join(data, "train"), os.path.join(data, "heldout")
    _run(progress, logs, "prepare_train", "bertjax.data.prepare", f"--input={texts}",
         f"--output_dir={train_dir}", *train_flags, "--num_workers=2", *common)
    _run(progress, logs, "prepare_heldout", "bertjax.data.prepare", f"--input={heldout}",
         f"--output_dir={heldout_dir}", *heldout_flags, "--num_workers=1", *common)
    return train_dir, heldout_dir


def _pretrain_stages(progress, logs, w, corpus, vocab, train_dir, heldout_dir, vocab_size):
    """Pretraining, held-out evaluation against the baselines, export and fill-mask."""
    progress.begin("pretrain")
    pre = os.path.join(w, "pretrain")
    steps = [f"--config.train.num_steps={FLAGS.pretrain_steps}"] if FLAGS.pretrain_steps else []
    config = PRETRAIN_CONFIG.get(FLAGS.pretrain_style, "configs/demo.py")
    out = _run(progress, logs, "pretrain", "bertjax.pretrain", f"--config={config}",
               f"--workdir={pre}", f"--config.data.train_dir={train_dir}",
               f"--config.data.eval_dir={heldout_dir}", f"--config.model.vocab_size={vocab_size}",
               f"--config.data.max_seq_length={SEQ}",
               f"--config.data.max_predictions_per_seq={PREDS}", *steps)
    pretrain_summary = _last_json(out)
    progress.end()

    progress.begin("evaluate")
    baseline = most_frequent_token_baseline(heldout_dir)
    ev = pretrain_summary.get("eval", {})
    progress.say(heldout_line(ev, baseline))
    progress.end()

    progress.begin("export")
    # Params-only checkpoint with the vocabulary beside it: what fine-tuning and export start from.
    ckpt = os.path.join(w, "pretrained")
    _save_pretrained(pre, vocab, ckpt)
    hf_out = os.path.join(w, "export_hf")
    _run(progress, logs, "export", "bertjax.tools.convert", f"--checkpoint={ckpt}", f"--to_hf={hf_out}")
    # An ELECTRA export is two directories; the generator is its masked LM.
    fill_dir = os.path.join(hf_out, "generator") if os.path.isdir(
        os.path.join(hf_out, "generator")) else hf_out
    fills = fill_mask_examples(fill_dir, os.path.join(corpus, "heldout", "wiki-heldout-00000.txt"))
    for f in fills:
        top = ", ".join(f"{t} {p:.2f}" for t, p in f["top"])
        progress.say(f"fill-mask (exported model in transformers): {f['text']}\n"
                     f"    -> {top}   (the word was: {f['answer']}, ranked {f['answer_rank']} "
                     f"of {vocab_size:,})")
    progress.end()

    report = {
        "pretrain_steps": pretrain_summary.get("step"),
        "heldout": ev, "train_last": pretrain_summary.get("train", {}),
        "most_frequent_token_baseline": baseline, "export": hf_out, "fill_mask": fills,
    }
    return pre, ckpt, report


@user_errors_exit
def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        # Orbax warns, reading the pretraining state for the params-only copy, about metadata
        # that copy does not need; the demo's output is its progress line and results.
        logging.set_verbosity(logging.ERROR)
    w = FLAGS.workdir
    reuse = FLAGS.reuse_data_from
    if reuse and os.path.abspath(reuse) == os.path.abspath(w):
        raise UserError("--reuse_data_from names the workdir itself; give another demo workdir")
    logs = os.path.join(w, "logs")
    progress = Progress(FLAGS.finetune_seeds, 1 if FLAGS.skip_random_init else 2)
    t_start, cpu_start = time.time(), _cpu_seconds()
    corpus, data = os.path.join(w, "corpus"), os.path.join(w, "data")
    labelled = os.path.join(w, "wordnet")
    if not os.path.exists("/usr/share/wordnet/data.noun"):
        raise UserError("Debian's wordnet-base is not installed (/usr/share/wordnet/data.noun); "
                        "`apt-get install wordnet-base`, or run `make demo` as root")

    # A rerun starts over: these are the demo's own outputs, and a resumed half of them would
    # not give the numbers of a fresh clone.
    for sub in ("corpus", "wordnet", "vocab", "data", "pretrain", "pretrained", "export_hf",
                "finetune", "logs"):
        shutil.rmtree(os.path.join(w, sub), ignore_errors=True)
    corpus, labelled, vocab, train_dir, heldout_dir, vocab_size = _data_stages(
        progress, logs, corpus, labelled, data, w, FLAGS.pretrain_style, reuse)

    pre, ckpt, report = _pretrain_stages(progress, logs, w, corpus, vocab, train_dir, heldout_dir,
                                         vocab_size)
    report["pretrain_style"] = FLAGS.pretrain_style
    report["data_from"] = os.path.abspath(reuse) if reuse else ""
    report["prepared"] = {"train": prepared_summary(train_dir),
                          "heldout": prepared_summary(heldout_dir)}
    progress.begin("finetune")
    if not FLAGS.skip_finetune:
        model_cfg = json.load(open(os.path.join(ckpt, "model_config.json")))
        report["finetune"] = _finetune_comparison(progress, logs, w, ckpt, vocab, labelled,
                                                  model_cfg)
        report["labelled"] = json.load(open(os.path.join(labelled, "stats.json")))
    progress.end()

    progress.begin("report")
    report["wall_seconds"] = round(time.time() - t_start, 1)
    report["cpu_seconds"] = round(_cpu_seconds() - cpu_start, 1)
    report["payoff"] = payoff(report.get("finetune", {}))
    png = os.path.join(w, "report.png")
    draw_report(os.path.join(pre, "metrics.jsonl"), report, png)
    with open(os.path.join(w, "report.json"), "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    progress.end()
    progress.say("")
    _print_summary(report, pre, w, png)


def heldout_line(ev: dict, baseline: dict) -> str:
    nsp = (f"NSP accuracy {100 * ev['nsp_accuracy']:.2f}% (chance 50%)" if "nsp_accuracy" in ev
           else f"SOP accuracy {100 * ev['sop_accuracy']:.2f}% (chance 50%)"
           if "sop_accuracy" in ev else "no NSP (MLM only)")
    if "disc_accuracy" in ev:  # ELECTRA: the MLM figure is its small generator's
        nsp = (f"discriminator accuracy {100 * ev['disc_accuracy']:.2f}% (precision "
               f"{100 * ev['disc_precision']:.1f}%, recall {100 * ev['disc_recall']:.1f}% on "
               f"{100 * ev['replaced_fraction']:.1f}% replaced tokens); the MLM figure is the "
               "generator's")
    return (f"held-out MLM accuracy {100 * ev.get('mlm_accuracy', 0):.2f}% (most-frequent-token "
            f"baseline {100 * baseline['accuracy']:.2f}%), {nsp}")


def prepared_summary(data_dir: str) -> dict:
    """What a prepared directory is, from its metadata.json: the pair task, the masking, how full
    its sequences are and how many there are."""
    meta = json.load(open(os.path.join(data_dir, "metadata.json")))
    st = meta["stats"]
    return {"nsp": bool(meta["nsp"]), "masking": meta["masking"],
            "static_masks": bool(meta["static_masks"]), "dupe_factor": meta["dupe_factor"],
            "max_seq_length": meta["max_seq_length"], "instances": st["instances"],
            "mean_tokens_per_instance": st["mean_tokens_per_instance"],
            "random_next_share": st["random_next_share"]}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children: on a shared box, the part of the wall
    time that was ours."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _save_pretrained(workdir: str, vocab_dir: str, out_dir: str) -> None:
    model, cfg, task, _, _ = model_files.load_model(workdir)
    extras = {n: os.path.join(vocab_dir, n) for n in os.listdir(vocab_dir)}
    extras[wd.IDENTITY_FILE] = open(os.path.join(workdir, wd.IDENTITY_FILE), "rb").read()
    model_files.save_checkpoint(out_dir, model, cfg, task, extra_files=extras)


def _finetune_comparison(progress, logs, w, ckpt, vocab, labelled, model_cfg) -> dict:
    """The same architecture and recipe fine-tuned from the pretrained checkpoint and from scratch.
    What counts is each seed's dev accuracy at the end of its fixed schedule (no choice of a
    step by dev score); the per-epoch evaluations are kept for the curves."""
    results = {}
    inits = (("pretrained", ckpt),) + ((("random_init", ""),) if not FLAGS.skip_random_init else ())
    for name, init in inits:
        workdir = os.path.join(w, "finetune", name)
        out = _run(progress, logs, f"finetune_{name}",
                   *finetune_args(labelled, vocab, workdir, init, model_cfg, FLAGS.finetune_seeds,
                                  FLAGS.finetune_epochs, FLAGS.finetune_lr))
        results[name] = final_accuracies(_last_json(out))
    return results


def finetune_args(labelled, vocab, workdir, init, model_cfg, seeds, epochs, lr) -> list[str]:
    """The demo's WordNet-topic fine-tuning as `python -m` arguments (the distillation benchmark
    runs the same recipe)."""
    shape = [f"--config.model.{k}={model_cfg[k]}" for k in
             ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size")]
    return ["bertjax.finetune", f"--config=configs/text_classification.py:{labelled}",
            f"--workdir={workdir}", f"--config.task.vocab={vocab}", f"--config.init_from={init}",
            f"--config.seeds={seeds}", f"--config.task.epochs={epochs}",
            f"--config.optim.learning_rate={lr}", f"--config.data.max_seq_length={FINETUNE_SEQ}",
            "--config.train.batch_size=16", *shape]


def final_accuracies(summary: dict) -> dict:
    """Adds to each seed of a finetune summary its dev accuracy curve (from the seed's
    metrics.jsonl) and the last point of it, `final`."""
    runs = []
    for r in summary.get("runs", []):
        steps, values = read_jsonl(os.path.join(r["workdir"], "metrics.jsonl"))["eval/accuracy"]
        runs.append({**r, "final": float(values[-1]), "final_step": int(steps[-1]),
                     "curve": [[int(s), float(v)] for s, v in zip(steps, values)]})
    mean, std = mean_std([r["final"] for r in runs]) if runs else (0.0, 0.0)
    return {**summary, "runs": runs, "final_mean": mean, "final_std": std}


def payoff(finetune: dict) -> dict:
    """The skeptic's test: does the worst pretrained seed beat the best random-init seed, each
    taken at the end of the same fixed fine-tuning schedule?"""
    pre = [r["final"] for r in finetune.get("pretrained", {}).get("runs", [])]
    rnd = [r["final"] for r in finetune.get("random_init", {}).get("runs", [])]
    if not pre or not rnd:
        return {}
    return {"worst_pretrained": min(pre), "best_random_init": max(rnd),
            "met": min(pre) > max(rnd), "margin": min(pre) - max(rnd)}


def draw_report(jsonl: str, report: dict, png: str) -> None:
    """Held-out MLM and NSP accuracy against their baselines, and every fine-tuning seed."""
    import matplotlib  # a second to import, for the last stage only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_jsonl(jsonl) if os.path.exists(jsonl) else {}
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for ax, key, base, label in (
            (axes[0], "eval/mlm_accuracy", report["most_frequent_token_baseline"]["accuracy"],
             "most frequent token"),
            (axes[1], "eval/nsp_accuracy", 0.5, "chance")):
        if key in series:
            steps, values = series[key]
            ax.plot(steps, 100 * values, "o-", lw=1.5, label="held-out")
        train_key = key.replace("eval/", "train/")
        if train_key in series:
            steps, values = series[train_key]
            ax.plot(steps, 100 * values, lw=0.8, alpha=0.5, label="training batches")
        ax.axhline(100 * base, color="gray", ls="--", label=label)
        ax.set_title(key.replace("eval/", "pretraining: ").replace("_", " ") + " (%)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ft, stats = report.get("finetune", {}), report.get("labelled", {})
    arms = (("random_init", "random init", "tab:orange"), ("pretrained", "pretrained", "tab:blue"))
    for name, label, color in arms:
        for k, r in enumerate(ft.get(name, {}).get("runs", [])):
            steps, values = zip(*r["curve"])
            axes[2].plot(steps, [100 * v for v in values], ".-", color=color, lw=1, alpha=0.7,
                         label=label if k == 0 else None)
    axes[2].set_title("fine-tuning: dev accuracy per epoch, every seed (%)")
    axes[2].set_xlabel("step")
    ax = axes[3]
    for x, (name, _, color) in enumerate(arms):
        vals = [100 * r["final"] for r in ft.get(name, {}).get("runs", [])]
        ax.plot([x] * len(vals), vals, "o", ms=7, alpha=0.7, color=color)
        if vals:
            ax.hlines(sum(vals) / len(vals), x - 0.2, x + 0.2, color="k")
    ax.set_xticks([0, 1], [label for _, label, _ in arms])
    ax.set_xlim(-0.6, 1.6)
    ax.set_title(f"fine-tuned, {stats.get('train', '?')} labels: final dev accuracy (%)")
    for ax in axes[2:]:
        if stats:
            ax.axhline(100 * stats["dev_majority_share"], color="gray", ls="--",
                       label="majority class")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = png + ".tmp"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, png)


def _print_summary(report: dict, pre: str, w: str, png: str) -> None:
    ev, base = report["heldout"], report["most_frequent_token_baseline"]
    print("== demo summary ==")
    if ev:
        print(heldout_line(ev, base))
    for name, res in report.get("finetune", {}).items():
        if res:
            runs = ", ".join(f"{100 * r['final']:.2f}" for r in res.get("runs", []))
            print(f"fine-tuned from {name}: final dev accuracy {100 * res['final_mean']:.2f} +- "
                  f"{100 * res['final_std']:.2f} over {res.get('seeds')} seeds ({runs})")
    p = report.get("payoff")
    if p:
        verdict = "pretraining pays" if p["met"] else "NOT shown"
        print(f"worst pretrained seed {100 * p['worst_pretrained']:.2f} vs best random-init seed "
              f"{100 * p['best_random_init']:.2f} (final dev accuracy, majority class "
              f"{100 * report.get('labelled', {}).get('dev_majority_share', 0):.1f}%): {verdict}")
    print(f"wall {report['wall_seconds']:.0f} s, CPU {report['cpu_seconds']:.0f} s "
          f"(this process and its children)")
    print(f"report: {png} and {os.path.join(w, 'report.json')}; logs: {os.path.join(w, 'logs')}")
    print(f"exported Hugging Face model: {report['export']}")
    print(f"TensorBoard: tensorboard --logdir {os.path.join(pre, 'tensorboard')}")


if __name__ == "__main__":
    cli.run(main, define_flags)
