# The sentence-embedding objectives (infonce, cosent, cosine_mse, sbert_softmax) and ELECTRA's
# replaced-token detection (electra) and ALBERT's sentence-order prediction (mlm_sop) build on
# objectives.py and register themselves there; imported with the package, so OBJECTIVES always
# holds them, without objectives.py importing its own extension.
from bertjax.train import contrastive, rtd, sop  # noqa: F401
