"""GLUE fine-tuning, one task per run: --config=configs/glue.py:TASK with TASK one of cola, sst2,
mrpc, stsb (regression), qqp, mnli (scored on matched and mismatched dev), qnli, rte, wnli.

bertjax finetune --config=configs/glue.py:rte --config.init_from=CKPT --workdir=DIR \
    --config.task.data_dir=GLUE_DIR --config.seeds=5

The recipe of the BERT paper: AdamW (weight decay 0.01, no bias correction as in the original),
batch 32, 3 epochs, linear warmup over the first 10% of steps then linear decay, dev evaluation
after every epoch with the best checkpoint kept. The paper picked the learning rate per task from
{5e-5, 4e-5, 3e-5, 2e-5} on dev; 2e-5 is the default here (--config.optim.learning_rate=...).
The small tasks (RTE, MRPC, STS-B, CoLA) swing by points between seeds: run several and read the
mean and spread in <workdir>/summary.json. data_dir is a GLUE directory in the public TSV layout
(or one task's directory), or a TFDS data_dir holding glue/<task>; nothing is downloaded.
--config.task.predict_test=true writes GLUE submission TSVs from the best checkpoint.
"""
from bertjax.config import finetune_config
from bertjax.data.tasks.glue import TASKS

TRAINABLE = tuple(name for name, t in TASKS.items() if t.dev_splits)


def get_config(arg: str = "sst2"):
    task = (arg or "sst2").lower().replace("-", "").replace("_", "")
    if task not in TRAINABLE:
        raise ValueError(f"unknown GLUE task {arg!r}; choose one of {', '.join(TRAINABLE)}")
    c = finetune_config("base", "glue")
    c.task.name = task
    c.data.max_seq_length = 128
    c.train.batch_size = 32
    c.task.epochs = 3.0
    c.task.warmup_fraction = 0.1
    c.optim.learning_rate = 2e-5
    return c
