"""The one place command-line flags and configs are parsed. Every entrypoint uses `run(main)`.

`--config=configs/x.py[:arg]` loads a recipe; `--config.a.b=v` overrides any leaf. An unknown key,
a wrong type or a bad flag ends in one line and exit code 2 (absl would print a usage block).
"""
from __future__ import annotations

import json
import logging as py_logging
import os
import sys
import warnings

# TensorFlow (the input pipeline) is noisy at start-up on machines without its accelerators.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging
from ml_collections import config_flags

from bertjax import config
from bertjax.errors import UserError, fail, user_errors_exit

FLAGS = flags.FLAGS


def define_config(default: str | None = None, name: str = "config") -> None:
    # Entrypoint modules each define it at import; importing two in one process (tests, the
    # Python API) must not fail on a duplicate flag.
    if name in FLAGS:
        return
    config_flags.DEFINE_config_file(
        name, default, "Recipe file (configs/*.py[:arg]); override leaves with --config.a.b=v",
        lock_config=True,
    )


def _parse(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as e:
        text = str(e)
        if "Traceback (most recent call last)" in text:  # a config file raised while loading
            fail(f"bad --config: {_last_line(e)}")
        fail(f"bad command line: {text}")
    except (KeyError, AttributeError, TypeError, ValueError, OSError, ImportError) as e:
        # Config files are loaded while flags are parsed; their errors are user errors too.
        fail(f"bad --config: {_last_line(e)}")
    return []  # unreachable: fail() exits


def _last_line(e: BaseException) -> str:
    """ml_collections wraps load errors in multi-line text; the last line names the cause."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def get_config(name: str = "config"):
    """The parsed config, validated; raises UserError for values no recipe could mean."""
    try:
        cfg = getattr(FLAGS, name)
        if cfg is not None:
            cfg.to_dict()  # a file that failed to load only raises when first touched
    except UserError as e:
        raise UserError(f"bad --{name}: {e}") from None
    except (KeyError, AttributeError, TypeError, ValueError, OSError, ImportError) as e:
        raise UserError(f"bad --{name}: {_last_line(e)}") from None
    if cfg is None:
        raise UserError(f"--{name} is required, e.g. --{name}=configs/bert_tiny.py")
    try:
        config.check_choices(cfg)
    except UserError as e:
        raise UserError(f"bad --{name}: {e}") from None
    return cfg


def config_to_dict(cfg) -> dict:
    return json.loads(cfg.to_json_best_effort())


def _drop_closed_loop_callbacks(unraisable) -> None:
    # After a failed async save, Orbax closes its event loop while TensorStore writes are still
    # in flight; each one that completes later tries to wake the closed loop, and TensorStore
    # reports that as an unraisable RuntimeError with a traceback. The save's failure itself is
    # reported once, by the Checkpointer; everything else goes to the default hook.
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
        return
    sys.__unraisablehook__(unraisable)


_ORBAX = f"{os.sep}orbax{os.sep}"
# Orbax's per-array write coroutine; after a failed save some are never awaited.
_ORBAX_UNAWAITED = "coroutine 'async_serialize_from_host"


class _DropOrbaxEchoes(py_logging.Filter):
    """A failed background save is logged many times over before bertjax's Checkpointer reports
    it as the run's one error line (with the cause): by Orbax's threads, a traceback per thread,
    and by asyncio, once per sibling write task of Orbax's whose failure nobody retrieved (when
    the task is garbage-collected, which under load can come before the error line).
    --verbosity=0 shows them again; unretrieved tasks of any other code are still logged."""

    def filter(self, record):
        if record.name == "asyncio":
            text = record.getMessage()
            return not (text.startswith("Task exception was never retrieved") and _ORBAX in text)
        return not (record.levelno >= py_logging.ERROR and _ORBAX in (record.pathname or ""))


def run(main, define_flags=None) -> None:
    """absl app.run with one-line errors for flags and UserError. `define_flags` defines the
    command's flags first: entrypoints never define them at import."""
    if define_flags is not None:
        define_flags()

    def quiet_main(argv):
        # Orbax logs every save step at INFO through absl; our progress line says what matters.
        if not FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
            py_logging.getLogger("absl").addFilter(_DropOrbaxEchoes())
            py_logging.getLogger("asyncio").addFilter(_DropOrbaxEchoes())
            warnings.filterwarnings("ignore", message=_ORBAX_UNAWAITED, category=RuntimeWarning)
            sys.unraisablehook = _drop_closed_loop_callbacks
        return main(argv)

    app.run(user_errors_exit(quiet_main), argv=sys.argv, flags_parser=_parse)
