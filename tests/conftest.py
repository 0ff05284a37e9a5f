"""Test set-up: 8 virtual CPU devices, quiet TensorFlow, and the repo on sys.path."""
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One persistent XLA cache for the whole run, subprocesses included: the tiny models' steps are
# compiled once instead of once per process (most of a subprocess test's time on 2 cores).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"bertjax-test-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pretrain_support import FAST_CPU_COMPILE  # noqa: E402  (why: see there)

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_CPU_COMPILE}".strip()

import bertjax  # noqa: E402,F401  (before jax: it tells libtpu that this host has no TPU)
import jax  # noqa: E402

# Under CI=1 (or true) a skip fails the run unless ci_skips.ALLOWED says why it may stand.
from ci_skips import (ci_enabled, pytest_collectreport, pytest_runtest_makereport,  # noqa: E402,F401
                      pytest_sessionfinish, pytest_terminal_summary)

jax.config.update("jax_num_cpu_devices", 8)

# The fault-injection suite draws its kill moments, bytes and failures from one seed per session;
# set here, before xdist starts its workers, so that every worker draws from the same one.
if not os.environ.get("BERTJAX_FAULT_SEED"):
    import random

    os.environ["BERTJAX_FAULT_SEED"] = str(random.SystemRandom().randrange(1 << 31))


def pytest_report_header(config):
    ci = ("on: a skip not in tests/ci_skips.py ALLOWED fails the run" if ci_enabled()
          else "off (CI unset): skips are reported, not failed")
    return [f"fault-injection seed: BERTJAX_FAULT_SEED={os.environ['BERTJAX_FAULT_SEED']}",
            f"CI skip check: {ci}"]


# The heaviest modules (their tests' summed seconds in a full run, 2026-12-05) run first, each
# kept whole: with `make test`'s `--dist loadfile` a module is one unit of work for one worker
# (and `--no-loadscope-reorder` keeps this order instead of xdist's most-tests-first),
# so its module-scoped fixtures are built once, and starting the longest units first leaves
# only short ones for the end, when the other worker may already be idle.
HEAVIEST_FIRST = ("test_pretrain.py", "test_faults_kill.py", "test_stream_sigkill.py",
                  "test_tpu_recipes_compile.py",
                  "test_faults_gcs.py", "test_electra.py", "test_faults_sigterm.py",
                  "test_roberta.py", "test_lora.py", "test_remote_paths.py", "test_faults_cli.py",
                  "test_distill.py", "test_embeddings_e2e.py", "test_faults_storage.py",
                  "test_tpu_compile.py")


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        name = item.path.name
        return HEAVIEST_FIRST.index(name) if name in HEAVIEST_FIRST else len(HEAVIEST_FIRST)

    items.sort(key=rank)  # stable: within a module, and among the rest, the usual order
