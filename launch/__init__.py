"""Cloud TPU VM launcher: `python -m launch.tpu COMMAND ...` (see docs/tpu.md).

Only the standard library and absl-py are imported here, so the launcher runs on a laptop that has
gcloud but not the training stack.
"""
