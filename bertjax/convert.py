"""Converting between Hugging Face BERT directories and bertjax checkpoints.

python -m bertjax.convert --from_hf=HF_DIR --out=CKPT_DIR
python -m bertjax.convert --checkpoint=CKPT_DIR --to_hf=HF_DIR

HF -> bertjax reads config.json and model.safetensors or pytorch_model.bin (BertForPreTraining,
BertModel, and the sequence/token classification and QA variants) and writes a params-only Orbax
checkpoint with model_config.json and the vocabulary files found there.
"""
from __future__ import annotations

from absl import flags

from bertjax import cli
from bertjax.errors import UserError

flags.DEFINE_string("from_hf", None, "Hugging Face BERT directory to read.")
flags.DEFINE_string("out", None, "bertjax checkpoint directory to write (with --from_hf).")
flags.DEFINE_string("checkpoint", None, "bertjax checkpoint (params-only dir or run workdir).")
flags.DEFINE_string("to_hf", None, "Hugging Face directory to write (with --checkpoint).")
flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from bertjax.interop import model_io, params as interop

    if FLAGS.from_hf and FLAGS.out:
        model, cfg, task, report, _ = model_io.load_model(FLAGS.from_hf)
        if report["unexpected"]:
            raise UserError(f"{FLAGS.from_hf} has weights bertjax does not know: "
                            f"{', '.join(report['unexpected'])}")
        model_io.save_checkpoint(FLAGS.out, model, cfg, task,
                                 extra_files=model_io.tokenizer_extras(FLAGS.from_hf),
                                 overwrite=FLAGS.overwrite)
        print(f"wrote {task} checkpoint to {FLAGS.out}")
    elif FLAGS.checkpoint and FLAGS.to_hf:
        model, cfg, task, _, _ = model_io.load_model(FLAGS.checkpoint)
        extras = model_io.tokenizer_extras(FLAGS.checkpoint)
        files = [p for name, p in extras.items() if isinstance(p, str)]
        interop.save_hf(model, cfg, task, FLAGS.to_hf, extra_files=files)
        print(f"wrote Hugging Face {task} model to {FLAGS.to_hf}")
    else:
        raise UserError("give either --from_hf=DIR --out=DIR or --checkpoint=DIR --to_hf=DIR")


if __name__ == "__main__":
    cli.run(main)
