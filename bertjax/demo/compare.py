"""RoBERTa's Table 2 on the demo: BERT's pretraining data (sentence pairs, MLM+NSP) against
RoBERTa's (FULL-SENTENCES packing, no NSP so MLM only, dynamic masks), at equal tokens.

    python -m bertjax.demo.compare --workdir=demo_compare [--arms=bert,roberta]
    python -m bertjax.demo.compare --workdir=demo_sharing --arms=electra,electra_gdes,electra_none

(the second is DeBERTa-v3's embedding-sharing ablation: plain, gdes and none at equal FLOPs)

Each arm is `bertjax demo --pretrain_style=ARM` in DIR/ARM: the same corpus, labelled set and
WordPiece vocabulary (the first arm builds them, the others reuse them with --reuse_data_from),
the same model, optimizer, steps, batch and sequence length (so the same tokens), and the same
5-seed WordNet fine-tuning. Only prepare's flags differ (bertjax.demo.run.PREPARE_FLAGS). The
optimizer is the demo's AdamW for both (not RoBERTa's beta2 = 0.98, eps = 1e-6), so that only the
data and the objective differ.

Held-out MLM accuracy is compared on the same positions: every arm's final checkpoint is scored
on every arm's held-out set (the same held-out articles, prepared in each arm's format with
static masks), so a column of the table is one set of masked tokens for all arms. The scorer
(heldout_mlm) reads the records with NumPy and takes the batches the pretraining loop's own
evaluation takes (full batches in record order); on an arm's own held-out set it must give the
number that arm's run printed, which the table shows beside it.

Output: the table on stdout and DIR/comparison.json; each arm's demo log in DIR/logs/.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from bertjax import cli
from bertjax.data import records
from bertjax.demo import run as demo
from bertjax.errors import UserError, user_errors_exit
from bertjax.load import model_files
from bertjax.train import flops
from bertjax.train.rtd import max_masked

FLAGS = flags.FLAGS
PIPELINE_CYCLE = 16  # bertjax.data.pipeline.PretrainInput's cycle_length: shards read at once
ARMS = tuple(demo.PREPARE_FLAGS)
DESCRIPTION = {
    "bert": "sentence pairs, MLM+NSP (the demo)",
    "roberta": "FULL-SENTENCES, MLM only, dynamic masks",
    "electra": "roberta's data, replaced-token detection at the MLM arm's FLOPs",
    "sop": "sentence-order pairs, MLM+SOP (ALBERT's pair task)",
    "electra_gdes": "electra with DeBERTa-v3's gradient-disentangled embedding sharing",
    "electra_none": "electra with separate generator and discriminator embeddings",
}


def define_flags() -> None:
    """Called by the command only (see cli.run)."""
    flags.DEFINE_string("workdir", "demo_compare", "Where the arms' demo workdirs go.")
    flags.DEFINE_list("arms", list(ARMS), f"Pretraining styles to compare, of {', '.join(ARMS)}.")
    flags.DEFINE_bool("reuse_finished", False, "Keep an arm whose DIR/ARM/report.json exists "
                      "instead of running it again (after an interrupted comparison).")
    flags.DEFINE_integer("pretrain_steps", 0, "Passed to every arm's demo (0 = configs/demo.py's).")
    flags.DEFINE_integer("finetune_seeds", 5, "Passed to every arm's demo.")
    flags.DEFINE_float("finetune_epochs", 10.0, "Passed to every arm's demo.")
    flags.DEFINE_bool("skip_finetune", False, "Passed to every arm's demo.")


# ------------------------------------------------------------------------------ held-out scoring


def interleaved(arrays: list, cycle: int) -> list:
    """The order tf.data's deterministic interleave (block_length 1) reads `arrays` in, as the
    pipeline reads shards: `cycle` open at a time, one record from each in turn, an exhausted one
    replaced by the next array when its turn comes round again. Returns (array, index) pairs."""
    queue = iter(range(len(arrays)))
    slots, pos, out = [None] * cycle, [0] * cycle, []
    i, ended = 0, False
    while True:
        a = slots[i]
        if a is not None:
            if pos[i] < len(arrays[a]):
                out.append((a, pos[i]))
                pos[i] += 1
            else:
                slots[i] = None
            i = (i + 1) % cycle
        elif not ended:
            nxt = next(queue, None)
            if nxt is None:
                ended = True
            else:
                slots[i], pos[i] = nxt, 0
        elif all(s is None for s in slots):
            return out
        else:
            i = (i + 1) % cycle


def heldout_batches(data_dir: str, batch_size: int):
    """The batches of a static held-out set that the pretraining loop evaluates (one host: the
    shards in metadata order, interleaved as bertjax.data.pipeline reads them, full batches only),
    as numpy arrays of the batch contract."""
    meta = json.load(open(os.path.join(data_dir, "metadata.json")))
    if not meta["static_masks"]:
        raise UserError(f"{data_dir} has dynamic masks; held-out sets are scored on fixed masks")
    dtype = records.dtype_from_metadata(meta)
    shards = [np.asarray(records.read_shard(os.path.join(data_dir, s["file"]), dtype))
              for s in meta["shards"] if s["records"] > 0]
    order = interleaved(shards, max(1, min(PIPELINE_CYCLE, len(shards))))
    rows = np.array([shards[a][k] for a, k in order], dtype)
    s, p = meta["max_seq_length"], meta["max_predictions_per_seq"]
    pos, slot = np.arange(s)[None, :], np.arange(p)[None, :]
    for start in range(0, len(rows) - batch_size + 1, batch_size):
        r = rows[start:start + batch_size]
        length, seg = r["length"][:, None], r["segment_start"][:, None]
        yield {"input_ids": r["tokens"].astype(np.int32),
               "segment_ids": ((pos >= seg) & (pos < length)).astype(np.int32),
               "input_mask": (pos < length).astype(np.int32),
               "masked_lm_positions": r["masked_positions"].astype(np.int32),
               "masked_lm_ids": r["masked_ids"].astype(np.int32),
               "masked_lm_weights": (slot < r["num_masked"][:, None]).astype(np.float32),
               "next_sentence_labels": r["next_sentence_label"].astype(np.int32)}


def heldout_mlm(checkpoint: str, data_dir: str, batch_size: int = 64) -> dict:
    """MLM accuracy of a checkpoint (any pretraining head; ELECTRA's is its generator, a network
    of 1/4 the width) on a static held-out set: the share of masked tokens whose argmax
    prediction is the original token."""
    model, _, task, _, _ = model_files.load_model(checkpoint)
    graphdef, state = nnx.split(model)

    @jax.jit
    def correct(state, b):
        m = nnx.merge(graphdef, state)
        mlm = m.generate if hasattr(m, "generate") else m
        out = mlm(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"])
        hit = jnp.argmax(out["mlm_logits"], -1) == b["masked_lm_ids"]
        return jnp.sum(hit * b["masked_lm_weights"]), jnp.sum(b["masked_lm_weights"])

    hits = total = 0.0
    sequences = 0
    for b in heldout_batches(data_dir, batch_size):
        h, n = correct(state, b)
        hits, total, sequences = hits + float(h), total + float(n), sequences + batch_size
    return {"mlm_accuracy": hits / max(total, 1.0), "masked_tokens": int(total),
            "sequences": sequences, "task": task}


def heldout_pair(checkpoint: str, data_dir: str, batch_size: int = 64) -> dict:
    """Accuracy of a checkpoint's pair head (NSP's or SOP's: the same 2-way head on the pooled
    [CLS] vector) on a static held-out set's pair labels, whichever task made them: ALBERT's
    probe of an NSP-trained model on SOP pairs and the other way round."""
    model, _, task, _, _ = model_files.load_model(checkpoint)
    graphdef, state = nnx.split(model)

    @jax.jit
    def correct(state, b):
        out = nnx.merge(graphdef, state)(b["input_ids"], b["segment_ids"], b["input_mask"],
                                         b["masked_lm_positions"])
        return jnp.sum(jnp.argmax(out["nsp_logits"], -1) == b["next_sentence_labels"])

    hits = pairs = 0
    for b in heldout_batches(data_dir, batch_size):
        hits, pairs = hits + int(correct(state, b)), pairs + batch_size
    return {"pair_accuracy": hits / max(pairs, 1), "pairs": pairs, "task": task}


def _pair_task(data_dir: str) -> str:
    meta = json.load(open(os.path.join(data_dir, "metadata.json")))
    return meta.get("pair_task") or ("nsp" if meta["nsp"] else "none")


# ------------------------------------------------------------------------------ the arms


def _run_arm(arm: str, w: str, data_from: str) -> dict:
    """Runs `bertjax demo --pretrain_style=ARM` in DIR/ARM (reusing the data stages of the demo
    workdir `data_from` when given; the random-init fine-tuning only in the first arm, as it does
    not depend on pretraining) and returns its report.json."""
    out = os.path.join(w, arm)
    report_path = os.path.join(out, "report.json")
    if FLAGS.reuse_finished and os.path.exists(report_path):
        print(f"[{arm}] kept: {report_path}", flush=True)
        return json.load(open(report_path))
    cmd = [sys.executable, "-m", "bertjax.demo.run", f"--workdir={out}",
           f"--pretrain_style={arm}", f"--pretrain_steps={FLAGS.pretrain_steps}",
           f"--finetune_seeds={FLAGS.finetune_seeds}", f"--finetune_epochs={FLAGS.finetune_epochs}",
           f"--skip_finetune={FLAGS.skip_finetune}"]
    if data_from:
        cmd += [f"--reuse_data_from={data_from}", "--skip_random_init"]
    logs = os.path.join(w, "logs")
    os.makedirs(logs, exist_ok=True)
    log_path = os.path.join(logs, f"demo_{arm}.log")
    t0 = time.time()
    print(f"[{arm}] $ {' '.join(cmd[2:])}  (log: {log_path})", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True,
                                                      env=env) as proc:
        for line in proc.stdout:
            log.write(line)
            log.flush()
            print(f"[{arm}] {line.rstrip()}", flush=True)
    if proc.returncode != 0:
        raise UserError(f"the {arm} arm's demo exited {proc.returncode}; its log is {log_path}")
    print(f"[{arm}] finished in {time.time() - t0:.0f} s", flush=True)
    return json.load(open(report_path))


def compare(w: str, arms: list[str]) -> dict:
    """Runs the arms (the first builds the shared data, the others reuse it), scores every arm on
    every arm's held-out set, and returns the comparison (also written to DIR/comparison.json)."""
    reports, first = {}, ""
    for arm in arms:
        reports[arm] = _run_arm(arm, w, first)
        first = first or os.path.join(w, arm)
    heldout = {arm: os.path.join(w, arm, "data", "heldout") for arm in arms}
    # The loop evaluates full batches of train.batch_size; every arm trains with the same one.
    configs = {arm: json.load(open(os.path.join(w, arm, "pretrain", "config.json"))) for arm in arms}
    batch_size = int(configs[arms[0]]["train"]["batch_size"])
    if any(int(c["train"]["batch_size"]) != batch_size for c in configs.values()):
        raise UserError("the arms were pretrained with different batch sizes; run them again")
    cross = {}
    for arm in arms:
        ckpt = os.path.join(w, arm, "pretrained")
        cross[arm] = {h: heldout_mlm(ckpt, d, batch_size) for h, d in heldout.items()}
    # The pair heads (NSP's, SOP's) on every held-out set that has pair labels.
    paired = {h: d for h, d in heldout.items() if _pair_task(d) != "none"}
    pair_cross = {arm: {h: {**heldout_pair(os.path.join(w, arm, "pretrained"), d, batch_size),
                            "pair_task": _pair_task(d)} for h, d in paired.items()}
                  for arm in arms if _pair_task(os.path.join(w, arm, "data", "train")) != "none"}
    train_flops = {arm: _train_flops(configs[arm], reports[arm]["pretrain_steps"]) for arm in arms}
    result = {"arms": arms, "workdir": os.path.abspath(w), "reports": reports, "heldout_mlm": cross,
              "train_flops": train_flops, "heldout_pair": pair_cross,
              "batch_size": batch_size, "pretrain_steps": reports[arms[0]]["pretrain_steps"],
              "baselines": {h: reports[h]["most_frequent_token_baseline"] for h in arms},
              "verdict": verdict(reports, cross)}
    with open(os.path.join(w, "comparison.json"), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    return result


def _train_flops(config: dict, steps: int) -> float:
    """Training FLOPs of a pretraining run (bertjax/train/flops.py; ELECTRA's both networks)."""
    seq = int(config["data"]["max_seq_length"])
    preds = int(config["data"]["max_predictions_per_seq"])
    if config["objective"]["name"] == "electra":
        per_token = flops.electra_flops_per_token(
            config["model"], seq, max_masked(float(config["objective"]["mask_rate"]), seq),
            int(config["objective"].get("generator_num_layers", 0)))
    else:
        per_token = flops.model_flops_per_token(config["model"], seq, preds)
    return per_token * seq * int(config["train"]["batch_size"]) * int(steps)


def verdict(reports: dict, cross: dict) -> dict:
    """Which arm is ahead on each measure: fine-tuning (mean final dev accuracy, and whether its
    worst seed beats the other arms' best) and held-out MLM on each held-out set."""
    out = {}
    ft = {a: r.get("finetune", {}).get("pretrained", {}) for a, r in reports.items()}
    if all(f.get("runs") for f in ft.values()):
        means = {a: f["final_mean"] for a, f in ft.items()}
        best = _winner(means)
        lead = max(means, key=means.get)
        others = [a for a in ft if a != lead]
        worst_best = min(r["final"] for r in ft[lead]["runs"])
        best_other = max(r["final"] for a in others for r in ft[a]["runs"])
        out["finetune"] = {"winner": best,
                           "margin": means[lead] - max(means[a] for a in others),
                           "every_seed_above": worst_best > best_other}
    for h in next(iter(cross.values())):
        scores = {a: cross[a][h]["mlm_accuracy"] for a in cross}
        out[f"heldout_mlm_on_{h}"] = {"winner": _winner(scores), "scores": scores}
    return out


def _winner(scores: dict) -> str:
    """The arm with the highest score, or "tie" when the best two are equal."""
    ranked = sorted(scores.values(), reverse=True)
    if len(ranked) > 1 and ranked[0] - ranked[1] < 1e-12:
        return "tie"
    return max(scores, key=scores.get)


def table(result: dict) -> str:
    arms, reports, cross = result["arms"], result["reports"], result["heldout_mlm"]
    steps, batch = result["pretrain_steps"], result["batch_size"]
    seq = reports[arms[0]]["prepared"]["train"]["max_seq_length"]
    lines = [f"== pretraining data and objective: batch {batch} x sequence {seq}, every arm =="]
    for a in arms:
        tr = reports[a]["prepared"]["train"]
        steps = reports[a]["pretrain_steps"]
        seen = steps * batch
        if "train_flops" in result:
            lines.append(f"{a:8s} {steps} steps, {result['train_flops'][a]:.3e} training FLOPs")
        lines.append(f"{a:8s} {DESCRIPTION.get(a, a)}: {tr['instances']:,} training sequences "
                     f"({seen / max(tr['instances'], 1):.2f} epochs), "
                     f"{tr['mean_tokens_per_instance']:.1f} real tokens per sequence of {seq} "
                     f"({seen * tr['mean_tokens_per_instance'] / 1e6:.2f} M real tokens seen)")
    lines += ["", "held-out MLM accuracy (%) of the final checkpoint; a column is one set of "
              "masked tokens for every arm:"]
    width = 36
    heads = [f"{h} held-out ({cross[arms[0]][h]['masked_tokens']:,} masked)" for h in arms]
    lines.append(f"{'':10s}" + "".join(f"{x:>{width}}" for x in heads))
    for a in arms:
        cells = []
        for h in arms:
            cell = f"{100 * cross[a][h]['mlm_accuracy']:.2f}"
            run = reports[a].get("heldout", {}).get("mlm_accuracy")
            if h == a and run is not None:
                cell += f" (its run: {100 * run:.2f})"
            cells.append(f"{cell:>{width}}")
        lines.append(f"{a:10s}" + "".join(cells))
    lines.append(f"{'unigram':10s}" + "".join(
        f"{100 * result['baselines'][h]['accuracy']:>{width}.2f}" for h in arms)
        + "   (most-frequent-token baseline)")
    nsp = reports.get("bert", {}).get("heldout", {}).get("nsp_accuracy")
    if nsp is not None:
        lines.append(f"bert's held-out NSP accuracy: {100 * nsp:.2f}% (chance 50%)")
    pair = result.get("heldout_pair") or {}
    if pair:
        sets = list(next(iter(pair.values())))
        lines += ["", "pair-head accuracy (%) on held-out pairs (chance 50%): a row is the model "
                  "(trained on its arm's pair task), a column a held-out set:"]
        heads = [f"{h}'s {pair[next(iter(pair))][h]['pair_task'].upper()} pairs "
                 f"({pair[next(iter(pair))][h]['pairs']:,})" for h in sets]
        lines.append(f"{'':10s}" + "".join(f"{x:>{width}}" for x in heads))
        for a, row in pair.items():
            lines.append(f"{a:10s}" + "".join(
                f"{100 * row[h]['pair_accuracy']:>{width}.2f}" for h in sets))
    if any(reports[a].get("finetune") for a in arms):
        lines += ["", "WordNet topics fine-tuned from each arm's checkpoint (the demo's recipe): "
                  "final dev accuracy (%)"]
        for a in arms:
            ft = reports[a].get("finetune", {}).get("pretrained", {})
            if ft.get("runs"):
                seeds = ", ".join(f"{100 * r['final']:.2f}" for r in ft["runs"])
                lines.append(f"{a:10s}{100 * ft['final_mean']:.2f} +- {100 * ft['final_std']:.2f} "
                             f"over {len(ft['runs'])} seeds ({seeds})")
        for a in arms:
            rnd = reports[a].get("finetune", {}).get("random_init", {})
            if rnd.get("runs"):
                seeds = ", ".join(f"{100 * r['final']:.2f}" for r in rnd["runs"])
                lines.append(f"{'random':10s}{100 * rnd['final_mean']:.2f} +- "
                             f"{100 * rnd['final_std']:.2f} ({seeds}; the {a} arm's run)")
    lines.append("")
    v = result["verdict"]
    if "finetune" in v:
        f = v["finetune"]
        if f["winner"] == "tie":
            lines.append("fine-tuning: a tie in mean final dev accuracy")
        else:
            lines.append(f"fine-tuning: {f['winner']} ahead by {100 * f['margin']:.2f} points of "
                         f"mean final dev accuracy; its worst seed above every other arm's best: "
                         f"{'yes' if f['every_seed_above'] else 'no'}")
    for h in arms:
        m = v[f"heldout_mlm_on_{h}"]
        who = "a tie" if m["winner"] == "tie" else f"{m['winner']} ahead"
        lines.append(f"held-out MLM on the {h} held-out set: {who}")
    for a in arms:
        lines.append(f"{a} arm: demo wall {reports[a]['wall_seconds']:.0f} s, CPU "
                     f"{reports[a]['cpu_seconds']:.0f} s")
    return "\n".join(lines)


@user_errors_exit
def main(argv):
    del argv
    arms = list(FLAGS.arms)
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms or len(set(arms)) != len(arms):
        raise UserError(f"--arms={','.join(arms)}; give distinct styles of {', '.join(ARMS)}")
    t0 = time.time()
    result = compare(FLAGS.workdir, arms)
    print(table(result))
    print(f"comparison wall {time.time() - t0:.0f} s; {os.path.join(FLAGS.workdir, 'comparison.json')}")


if __name__ == "__main__":
    cli.run(main, define_flags)
