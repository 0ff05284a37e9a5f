"""Flax NNX modules only: no I/O, no TensorFlow, no optax."""
from bertjax.model.bert import (  # noqa: F401
    TASK_MODELS,
    BertForMaskedLM,
    BertForPretraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    build_model,
    count_params,
)
from bertjax.model.encoder import BertConfig, BertModel  # noqa: F401
from bertjax.model.presets import PRESETS  # noqa: F401
