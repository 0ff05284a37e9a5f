"""TensorFlow as bertjax uses it: tf.data and tf.io only, kept off the accelerators JAX owns.

Import `tf` from here instead of importing tensorflow directly."""
from __future__ import annotations

import importlib.abc
import sys

from bertjax.errors import UserError


class _SkipKerasEagerLoad(importlib.abc.MetaPathFinder):
    """TensorFlow's __init__ imports keras.src.optimizers eagerly (for SavedModel registration)
    inside a try that tolerates ImportError. That drags in Keras, scikit-learn and SciPy: about
    3 CPU-seconds at every start of every command that reads data, for nothing bertjax uses.
    Refusing keras.src while TensorFlow imports skips it; the failed import leaves nothing in
    sys.modules, so a later `import keras` by anyone works as usual."""

    def find_spec(self, name, path=None, target=None):
        if name == "keras.src" or name.startswith("keras.src."):
            raise ModuleNotFoundError(f"{name} is not loaded by bertjax's TensorFlow import")
        return None


def _import_tensorflow():
    if "tensorflow" in sys.modules:
        import tensorflow
    else:
        finder = _SkipKerasEagerLoad()
        sys.meta_path.insert(0, finder)
        try:
            import tensorflow
        finally:
            sys.meta_path.remove(finder)
    # TensorFlow only feeds data: it must never take GPU/TPU memory from JAX.
    for kind in ("GPU", "TPU"):
        try:
            tensorflow.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):
            pass  # already initialised, or no such device type in this build
    return tensorflow


tf = _import_tensorflow()


def marked_error(e: Exception, mark: str) -> UserError | None:
    """The refusal a tf.data Python stage raised as ValueError(mark + message), out of the
    OpError TensorFlow wraps it in (TensorFlow appends its own context after ours: "] [Condition
    ...", op names); None when `e` carries no such mark."""
    text = e.message if hasattr(e, "message") else str(e)
    if mark not in text:
        return None
    return UserError(text.split(mark, 1)[1].split("|")[0].splitlines()[0].strip())
