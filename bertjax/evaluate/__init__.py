"""Task metrics (GLUE, official SQuAD, conlleval-compatible CoNLL) and prediction writers.

Pure numpy/Python: nothing here imports JAX or TensorFlow."""
