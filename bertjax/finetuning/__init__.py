"""Fine-tuning glue between task data (bertjax.data.tasks), metrics (bertjax.evaluate) and the one
training loop (bertjax.train.loop): in-memory batching, init_from and vocabulary resolution, one
module per task family, and the multi-seed driver that `bertjax finetune` calls.

Nothing here imports TensorFlow except GLUE's TFDS reader, and only when it is asked for."""
