"""Opening checkpoints of every kind (model_files.py)."""
