"""Bounded retries for checkpoints on gs:// (TensorStore, under Orbax).

Orbax writes and reads array data with TensorStore's gcs driver. That driver retries a request
that got 429 or 5xx, or a transport error or timeout, with exponential backoff: retry k waits
about min(initial_delay * 2**k, max_delay) plus a little jitter, and it gives up after
max_retries ("All N retry attempts failed").
Its defaults (context resource `gcs_request_retries`: 32 retries, 1 s, 32 s) keep one failing
request going for about 15 minutes before the save is reported failed. bertjax bounds that to

    BERTJAX_GCS_MAX_RETRIES        10    retries of one request
    BERTJAX_GCS_RETRY_INITIAL_S    1.0   first backoff, doubled each retry
    BERTJAX_GCS_RETRY_MAX_S        32.0  cap on one backoff

i.e. about 3 minutes (1+2+4+8+16+32*5 s, plus jitter) of one request failing without a break
before the save fails and the run stops with one line; the last committed step stays as it was
and the rerun resumes from it. Each request has its own budget.

A connection that stalls (no bytes moving) is cut by curl's low-speed check so that it is
retried like a failure, rather than holding the save for ever: bertjax sets
TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS=60 and TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES=256 when
they are unset (the values jax sets on Cloud TPU VMs; TensorStore has no request timeout of its
own).

Orbax 0.12 takes no TensorStore context from its caller: every handler builds one from the module
dicts in `orbax.checkpoint._src.serialization.tensorstore_utils` (`get_ts_context`), so the
retry resource is added to those dicts. `tests/test_faults_gcs.py` checks that it reaches
`get_ts_context()`; an Orbax that changes this fails that test instead of silently dropping the
bound.

The other gs:// clients keep their own bounded retries (documented in docs/reliability.md):
TensorFlow's GCS filesystem (input shards, metadata, metrics, Orbax's small files through epath)
reads GCS_RETRY_CONFIG_MAX_RETRIES (10), GCS_RETRY_CONFIG_INIT_DELAY_TIME_US (100 ms) and
GCS_RETRY_CONFIG_MAX_DELAY_TIME_US (32 s); google-cloud-storage retries idempotent calls for up
to 120 s.
"""
from __future__ import annotations

import logging
import os

from bertjax.errors import UserError

DEFAULTS = {"BERTJAX_GCS_MAX_RETRIES": 10, "BERTJAX_GCS_RETRY_INITIAL_S": 1.0,
            "BERTJAX_GCS_RETRY_MAX_S": 32.0}
_CURL_DEFAULTS = {"TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS": "60",
                  "TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES": "256"}

_applied: dict | None = None


def _number(name: str, kind, low):
    text = os.environ.get(name, "").strip()
    if not text:
        return DEFAULTS[name]
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value < low or value != value:
        raise UserError(f"{name}={text!r} is not a {'whole ' if kind is int else ''}number >= "
                        f"{low}; unset it for the default ({DEFAULTS[name]})")
    return value


def settings() -> dict:
    """TensorStore's `gcs_request_retries` resource from the environment (see the docstring)."""
    retries = _number("BERTJAX_GCS_MAX_RETRIES", int, 1)
    initial = _number("BERTJAX_GCS_RETRY_INITIAL_S", float, 0.001)
    longest = _number("BERTJAX_GCS_RETRY_MAX_S", float, 0.001)
    if longest < initial:
        raise UserError(f"BERTJAX_GCS_RETRY_MAX_S ({longest}) is below BERTJAX_GCS_RETRY_INITIAL_S "
                        f"({initial}); the cap on one backoff must be at least the first one")
    return {"max_retries": retries, "initial_delay": f"{initial:g}s", "max_delay": f"{longest:g}s"}


def apply() -> dict:
    """Puts the bounded retries into every TensorStore context Orbax makes, and curl's stall
    check into the environment (unless set). Idempotent; call before the first checkpoint I/O."""
    global _applied
    spec = settings()
    for name, value in _CURL_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if _applied == spec:
        return spec
    try:
        # Orbax's private module (hence the guard), imported after the curl settings above.
        from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

        targets = (ts_utils._BASE_TS_CONTEXT, ts_utils._DEFAULT_OCDBT_TS_CONTEXT)
    except (ImportError, AttributeError):
        logging.warning("this Orbax has no TensorStore context defaults to extend; gs:// "
                        "checkpoints use TensorStore's own retries (32, up to 32 s apart)")
        return spec
    for context in targets:
        context["gcs_request_retries"] = dict(spec)
    _applied = spec
    return spec
