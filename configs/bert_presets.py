"""Any preset by name: --config=configs/bert_presets.py:mini (tiny, mini, small, medium, base, large)."""
from bertjax.config import base_config


def get_config(arg: str = "mini"):
    return base_config(arg or "mini")
