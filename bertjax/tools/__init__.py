"""Commands around a checkpoint: convert, export, embed, fill-mask, print-config, and `plan` (TPU fit, compiled ahead of time)."""
