"""Converting between Hugging Face BERT directories and bertjax checkpoints.

bertjax convert --from_hf=HF_DIR --out=CKPT_DIR
bertjax convert --from_tf=TF_DIR --out=CKPT_DIR
bertjax convert --checkpoint=CKPT_DIR --to_hf=HF_DIR

HF -> bertjax reads config.json and model.safetensors or pytorch_model.bin (BertForPreTraining,
BertModel, and the sequence/token classification and QA variants) and writes a params-only Orbax
checkpoint with model_config.json and the vocabulary files found there.

TF -> bertjax reads an original google-research/bert directory (bert_config.json, vocab.txt,
bert_model.ckpt.*): the encoder, the MLM and NSP heads of pretraining checkpoints, or the
classifier / SQuAD layer of run_classifier / run_squad outputs. Unknown, missing or mis-shaped
variables are listed by name in one line.
"""
from __future__ import annotations

import os

from absl import flags

from bertjax import cli
from bertjax.errors import UserError
from bertjax.interop import electra_pair, params as interop
from bertjax.load import model_files


def define_flags() -> None:
    """Called by the command only (see cli.run)."""
    flags.DEFINE_string("from_hf", None, "Hugging Face BERT directory to read.")
    flags.DEFINE_string("from_tf", None, "Original TF BERT directory to read (bert_config.json, "
                        "vocab.txt, bert_model.ckpt.*).")
    flags.DEFINE_string("out", None, "bertjax checkpoint directory to write (with --from_hf or "
                        "--from_tf).")
    flags.DEFINE_string("checkpoint", None, "bertjax checkpoint (params-only dir or run workdir).")
    flags.DEFINE_string("to_hf", None, "Hugging Face directory to write (with --checkpoint).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")


FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.from_hf and FLAGS.out:
        model, cfg, task, report, _ = model_files.load_model(FLAGS.from_hf)
        if report["unexpected"]:
            raise UserError(f"{FLAGS.from_hf} has weights bertjax does not know: "
                            f"{', '.join(report['unexpected'])}")
        model_files.save_checkpoint(FLAGS.out, model, cfg, task,
                                 extra_files=model_files.tokenizer_extras(FLAGS.from_hf),
                                 overwrite=FLAGS.overwrite)
        print(f"wrote {task} checkpoint to {FLAGS.out}")
    elif FLAGS.from_tf and FLAGS.out:
        from bertjax.interop import tf_checkpoint  # TensorFlow: only for this direction

        if not os.path.isdir(FLAGS.from_tf):
            raise UserError(f"--from_tf={FLAGS.from_tf} is not a directory; pass the directory "
                            "holding bert_config.json, vocab.txt and bert_model.ckpt.*")
        extras = tf_checkpoint.tokenizer_extras(FLAGS.from_tf)
        model, cfg, task = tf_checkpoint.load_tf(FLAGS.from_tf)
        model_files.save_checkpoint(FLAGS.out, model, cfg, task, extra_files=extras,
                                 overwrite=FLAGS.overwrite)
        print(f"wrote {task} checkpoint to {FLAGS.out}")
    elif FLAGS.checkpoint and FLAGS.to_hf:
        model, cfg, task, _, _ = model_files.load_model(FLAGS.checkpoint)
        extras = model_files.tokenizer_extras(FLAGS.checkpoint)
        files = [p for name, p in extras.items() if isinstance(p, str)]
        if task == electra_pair.PRETRAINING:  # two networks, two HF directories
            electra_pair.save_hf(model, cfg, FLAGS.to_hf, extra_files=files)
        else:
            interop.save_hf(model, cfg, task, FLAGS.to_hf, extra_files=files)
        print(f"wrote Hugging Face {task} model to {FLAGS.to_hf}")
    else:
        raise UserError("give --from_hf=DIR --out=DIR, --from_tf=DIR --out=DIR or "
                        "--checkpoint=DIR --to_hf=DIR")


if __name__ == "__main__":
    cli.run(main, define_flags)
