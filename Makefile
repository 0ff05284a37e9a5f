# Two commands: `make demo` and `make test`. Both create .venv and install the pinned set first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint clean

# The install is timed on its own: the demo's own clock starts after it.
$(STAMP): requirements.txt requirements-dev.txt
	@start=$$(date +%s); \
	  { test -x $(BIN)/python || $(PY) -m venv $(VENV); } && \
	  $(BIN)/pip install -q --upgrade pip && \
	  $(BIN)/pip install -q -r requirements-dev.txt && \
	  $(BIN)/pip install -q --no-deps --no-build-isolation -e . && \
	  touch $(STAMP) && echo "install took $$(( $$(date +%s) - start )) s"

setup: $(STAMP)

# -rs lists every skip with its reason and --durations=15 the slowest tests; with CI=1 (set by
# .ci/run) a skip that tests/ci_skips.py does not allow fails the run.
test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -m pytest -q -rs --durations=15 -n 2 --dist loadfile --no-loadscope-reorder tests

# The demo's glosses and labelled definitions come from Debian's wordnet-base (installed here
# when apt-get can; the demo stops with the command to run when it is missing).
# bertjax.bench.embeddings reads wordnet-base too, and Debian's dict-gcide (apt-get install
# dict-gcide) for its out-of-domain GCIDE column; it is not installed here because only that
# benchmark uses it, and the column says "absent" without it.
demo: $(STAMP)
	@test -f /usr/share/wordnet/data.noun || { command -v apt-get >/dev/null && \
	  { apt-get install -y -qq wordnet-base >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wordnet-base >/dev/null 2>&1; }; }; } || \
	  echo "note: could not install wordnet-base (apt-get install wordnet-base, as root)"
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/bertjax demo --workdir=demo_out

lint: $(STAMP)
	$(BIN)/ruff check bertjax launch tests configs

clean:
	rm -rf $(VENV) demo_out
