# The sentence-embedding objectives (infonce, cosent, cosine_mse, sbert_softmax), ELECTRA's
# replaced-token detection (electra), ALBERT's sentence-order prediction (mlm_sop) and
# distillation (distill) build on objectives.py and register themselves there; imported with the
# package, so OBJECTIVES always holds them, without objectives.py importing its own extension.
from bertjax.train import contrastive, distill, rtd, sop  # noqa: F401
