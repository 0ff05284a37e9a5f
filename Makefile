# Two commands: `make demo` and `make test`. Both create .venv and install the pinned set first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -m pytest -q -n 2 tests

# The fine-tuning dataset comes from Debian's wordnet-base; without root/apt the demo falls back
# to gensim's small movie-review set.
demo: $(STAMP)
	@test -f /usr/share/wordnet/data.noun || { command -v apt-get >/dev/null && \
	  { apt-get install -y -qq wordnet-base >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wordnet-base >/dev/null 2>&1; }; }; } || \
	  echo "note: could not install wordnet-base; the demo will fine-tune on the movie-review set"
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -m bertjax.demo --workdir=demo_out

lint: $(STAMP)
	$(BIN)/ruff check bertjax launch tests configs

clean:
	rm -rf $(VENV) demo_out
