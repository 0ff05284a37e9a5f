"""Fine-tuning task data: GLUE (glue.py), SQuAD (squad.py), CoNLL NER (ner.py) and shared packing
(features.py). The tiny generated data sets the tests train on are tests/toy_tasks.py.

Pure Python/numpy; only glue.read_tfds imports TensorFlow, and only when called."""
