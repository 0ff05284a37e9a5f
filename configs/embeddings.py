"""Sentence embeddings (Sentence-BERT, E5, BGE, GTE): a bi-encoder fine-tuned on JSONL pairs.

bertjax finetune --config=configs/embeddings.py --config.init_from=CKPT --workdir=DIR \
    --config.task.train_file=train.jsonl --config.task.dev_file=dev.jsonl

Triplets {"query", "positive", "negatives"} train in-batch-negatives InfoNCE over the global batch
(sentence-transformers' MultipleNegativesRankingLoss, temperature 0.05); scored pairs
{"text_a", "text_b", "score"} train CoSENT; labelled pairs {"text_a", "text_b", "label"} train
SBERT's softmax classifier. The start model's pooling and prompts when it is a
sentence-transformers directory or an embedding checkpoint, else mean pooling and none; L2
normalisation; learning rate 2e-5, batch 32, 1 epoch, 10% warmup, max_seq_length 128
(bertjax/finetuning/embedding_task.py). The argument sets prefixes, which win over the start's:
"e5" ("query: "/"passage: "), "bge" (BGE's query instruction, CLS pooling, temperature 0.02),
"" none of its own.
"""
from bertjax.config import finetune_config

BGE_INSTRUCTION = "Represent this sentence for searching relevant passages: "


def get_config(arg: str = ""):
    c = finetune_config("base", "embeddings")
    c.data.max_seq_length = 128
    c.train.batch_size = 32
    c.task.epochs = 1.0
    c.optim.learning_rate = 2e-5
    if arg == "e5":
        c.task.query_prefix, c.task.passage_prefix = "query: ", "passage: "
        c.task.temperature = 0.01
    elif arg == "bge":
        c.task.query_prefix, c.task.pooling, c.task.temperature = BGE_INSTRUCTION, "cls", 0.02
    elif arg:
        raise ValueError(f"configs/embeddings.py takes '', 'e5' or 'bge', not {arg!r}")
    return c
