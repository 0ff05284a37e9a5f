"""Fine-tuning entrypoint: GLUE, SQuAD v1.1/v2.0 and CoNLL NER from a pretrained checkpoint.

bertjax finetune --config=configs/glue.py:mnli --config.init_from=CKPT --workdir=DIR \
    --config.task.data_dir=GLUE_DIR [--config.seeds=5] [--config.task.predict_test=true]
bertjax finetune --config=configs/squad.py:v2 --config.init_from=CKPT --workdir=DIR \
    --config.task.train_file=train-v2.0.json --config.task.predict_file=dev-v2.0.json
bertjax finetune --config=configs/ner.py --config.init_from=CKPT --workdir=DIR \
    --config.task.data_dir=CONLL_DIR

CKPT is a bertjax params-only checkpoint, a pretraining workdir or a Hugging Face BERT directory;
the vocabulary comes from it unless --config.task.vocab says otherwise. The number of steps, the
warmup and the eval interval follow from the training-set size (task.epochs, task.warmup_fraction).
<workdir>/summary.json holds each seed's best dev result and their mean and standard deviation.
Rerunning a command resumes it; SIGTERM saves and exits 0.
"""
from __future__ import annotations

import json

import jax
from absl import flags

from bertjax import api, cli
from bertjax.train import distributed


def define_flags() -> None:
    """Called by the command only (see cli.run)."""
    cli.define_config()
    flags.DEFINE_string("workdir", None, "Where checkpoints, predictions and the summary go.")


def main(argv):
    del argv
    cfg, workdir = cli.get_config(), flags.FLAGS.workdir or ""
    api.check_finetune(cfg, workdir)  # a bad command fails before joining the cluster
    distributed.initialize(cfg.distributed)
    # The Python API's finetune is this command's body, so the two cannot drift apart.
    summary = api.finetune(cfg, workdir)
    if jax.process_index() == 0:
        print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    cli.run(main, define_flags)
