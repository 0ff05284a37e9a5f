"""Fine-tuning task data: GLUE (glue.py), SQuAD (squad.py), CoNLL NER (ner.py), shared packing
and batching (features.py), and tiny generated data sets for tests (toy.py).

Pure Python/numpy; only glue.read_tfds imports TensorFlow, and only when called."""
