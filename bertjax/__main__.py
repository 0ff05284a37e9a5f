"""The front door: `bertjax COMMAND [flags]` (or `python -m bertjax COMMAND`).

Each command is a module with its own flags (`bertjax COMMAND --help` lists them); this only
dispatches, so `bertjax pretrain ...` and `python -m bertjax.pretrain ...` are the same program.
"""
from __future__ import annotations

import runpy
import sys

# command -> (module, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "train-vocab": ("bertjax.text.train_vocab", "train a WordPiece, SentencePiece or byte-level BPE vocabulary"),
    "prepare": ("bertjax.data.prepare", "corpus -> masked sentence-pair record shards"),
    "pretrain": ("bertjax.pretrain", "pretrain (or resume) on prepared shards"),
    "distill": ("bertjax.distill", "train a smaller student from a frozen teacher (DistilBERT)"),
    "finetune": ("bertjax.finetune", "fine-tune on GLUE, SQuAD, NER or sentence-embedding pairs"),
    "plan": ("bertjax.tools.plan", "compile a run's step for a TPU slice, no TPU needed: will it fit?"),
    "convert": ("bertjax.tools.convert", "Hugging Face <-> bertjax checkpoints"),
    "export": ("bertjax.tools.export", "export a checkpoint with heads and tokenizer files"),
    "embed": ("bertjax.tools.embed", "sentence embeddings from any checkpoint"),
    "eval-retrieval": ("bertjax.tools.eval_retrieval", "retrieval (BEIR layout) and STS scores of embeddings"),
    "fill-mask": ("bertjax.tools.fill_mask", "top candidates for each [MASK]"),
    "bench": ("bertjax.bench.step", "throughput of the real train step (optionally against HF)"),
    "bench-data": ("bertjax.bench.data", "throughput and memory of prepare and the pipeline"),
    "bench-tokenize": ("bertjax.bench.tokenizer", "tokenizer throughput against Hugging Face"),
    "print-config": ("bertjax.tools.print_config", "the resolved config after overrides"),
    "demo": ("bertjax.demo.run", "the whole product on real English text, on a CPU"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: bertjax COMMAND [flags]   (bertjax COMMAND --help for its flags)", ""]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    module = COMMANDS[name][0]
    sys.argv = [f"bertjax {name}"] + argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
