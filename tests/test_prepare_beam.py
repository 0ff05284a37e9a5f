"""Issue 13: prepare on Apache Beam (DirectRunner, 2 worker processes) and on gs:// URLs.

Every expected byte comes from the local runner on local files (the `reference` fixture): the Beam
runner, a run killed half-way and resumed, and runs reading and writing a fake GCS bucket must
reproduce it exactly. Bad inputs go through the CLI with --runner=beam: exit 2, one line on stderr
(the same line the local runner prints), nothing marked complete.
"""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import fake_gcs
from bertjax.bench.data import synthetic_corpus
from bertjax.data import prepare, storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = dict(max_seq_length=64, max_predictions_per_seq=10, dupe_factor=2, seed=3,
                whole_word_masking=True)
FLAGS = [f"--{k}={v}" for k, v in SETTINGS.items()]
# Run-specific by nature, so left out of the comparison: where the inputs live.
PLACE = ("inputs", "shards")


def _env(**extra):
    return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", **extra)


def _cli(args, env=None, cwd=REPO):
    cmd = [sys.executable, "-m", "bertjax.data.prepare", *args]
    return subprocess.run(cmd, env=env or _env(), cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def _files(out):
    """Every file of a prepared directory (shards, metadata.json, vocabulary, continuation table),
    .done files aside: they hold timings and the worker's name."""
    found = {}
    for path in glob.glob(os.path.join(out, "**", "*"), recursive=True):
        if os.path.isfile(path) and not path.endswith(".done"):
            with open(path, "rb") as f:
                found[os.path.relpath(path, out)] = f.read()
    return found


def _placeless(meta: bytes) -> dict:
    m = json.loads(meta)
    m["shards"] = [{k: v for k, v in s.items() if k != "input"} for s in m["shards"]]
    return {k: v for k, v in m.items() if k != "inputs"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("beam-corpus")
    # Four files of unequal length, so the two workers finish units at different times.
    glob_, vocab = synthetic_corpus(str(root), files=4, docs_per_file=60, sentences=(4, 30), seed=5)
    return glob_, vocab


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("local-ref")
    prepare.prepare(prepare.Options(input=corpus[0], vocab=corpus[1], output_dir=str(out),
                                    num_workers=1, **SETTINGS))
    return _files(str(out))


def _beam_args(corpus, out, workers=2):
    return [f"--input={corpus[0]}", f"--vocab={corpus[1]}", f"--output_dir={out}", *FLAGS,
            "--runner=beam", f"--num_workers={workers}"]


@pytest.mark.slow
def test_direct_runner_with_two_processes_writes_the_local_runners_bytes(corpus, reference,
                                                                         tmp_path):
    out, scratch = tmp_path / "beam", tmp_path / "tmp"
    scratch.mkdir()
    r = _cli(_beam_args(corpus, out), env=_env(TMPDIR=str(scratch)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.listdir(scratch) == []  # Beam's temporary directories and the log are gone
    assert r.stderr == ""  # Beam's own logging goes to its log file, not the terminal
    assert "--direct_num_workers=2 --direct_running_mode=multi_processing" in r.stdout
    assert _files(str(out)) == reference
    workers = {json.load(open(p))["stats"]["worker"] for p in glob.glob(str(out / "*.done"))}
    assert len(workers) == 2, workers  # the units really ran in two processes
    assert not glob.glob(str(out / ".*"))


@pytest.mark.slow
def test_a_killed_beam_run_resumes_to_the_same_bytes(corpus, reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "bertjax.data.prepare", *_beam_args(corpus, out)]
    scratch = tmp_path / "tmp"  # where the killed run's scratch directory stays behind
    scratch.mkdir()
    proc = subprocess.Popen(cmd, env=_env(TMPDIR=str(scratch)), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not glob.glob(str(out / "*.done")):
        assert proc.poll() is None and time.monotonic() < deadline, "no shard finished"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and Beam's worker processes with it
    proc.wait()
    assert not (out / "metadata.json").exists()
    complete = len(glob.glob(str(out / "*.done")))
    assert 1 <= complete < 8
    before = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(out / "*.done"))}

    r = _cli(_beam_args(corpus, out))
    assert r.returncode == 0, r.stderr[-3000:]
    # Shards that finished in the killed run are not rebuilt; some may have finished after the
    # count above, before the kill landed.
    skipped = int(r.stdout.split(" already complete")[0].rsplit(" ", 1)[1])
    assert skipped >= complete
    assert all(os.stat(p).st_mtime_ns == t for p, t in before.items())
    assert _files(str(out)) == reference
    assert not glob.glob(str(out / ".*"))


# --------------------------------------------------------------------------------------- gs://

needs_gcs = pytest.mark.skipif(fake_gcs.unavailable_reason() is not None,
                               reason=str(fake_gcs.unavailable_reason()))


gcs = pytest.fixture(scope="module", name="gcs")(fake_gcs.serve)


def _bucket_files(gcs, prefix):
    return {n[len(prefix) + 1:]: gcs.read(n) for n in gcs.list(prefix + "/")
            if not n.endswith(".done")}


def _assert_like_reference(found, reference):
    assert sorted(found) == sorted(reference)
    for name, data in reference.items():
        if name == "metadata.json":
            assert _placeless(found[name]) == _placeless(data)
        else:
            assert found[name] == data, name


@needs_gcs
@pytest.mark.slow
def test_both_runners_read_and_write_gs_urls(gcs, corpus, reference, tmp_path):
    for path in sorted(glob.glob(corpus[0])):
        gcs.upload_file(path, f"corpus/{os.path.basename(path)}")
    gcs.upload_file(corpus[1], "vocab/vocab.txt")
    bucket = f"gs://{gcs.bucket}"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for runner in ("beam", "local"):
        args = [f"--input={bucket}/corpus/c*.txt", f"--vocab={bucket}/vocab/vocab.txt",
                f"--output_dir={bucket}/out-{runner}", *FLAGS, f"--runner={runner}",
                "--num_workers=2"]
        r = _cli(args, env=_env(**gcs.env()), cwd=cwd)
        assert r.returncode == 0, (runner, r.stderr[-3000:])
        found = _bucket_files(gcs, f"out-{runner}")
        _assert_like_reference(found, reference)
        meta = json.loads(found["metadata.json"])
        assert meta["inputs"] == [f"{bucket}/corpus/c{i:04d}.txt" for i in range(4)]
        assert not [n for n in gcs.list(f"out-{runner}/") if ".tmp" in n]
    assert os.listdir(cwd) == []


class _Flaky:
    """Wraps the storage client's HTTP session: the first `times` requests whose method and URL
    match a rule are answered 503, as GCS does under load, without reaching the store."""

    def __init__(self, session, rules):
        self._session = session
        self.rules = dict(rules)
        self.injected = 0

    def request(self, method, url, *args, **kwargs):
        import requests

        for (m, part), left in self.rules.items():
            if method == m and part in url and left:
                self.rules[(m, part)] = left - 1
                self.injected += 1
                r = requests.Response()
                r.status_code = 503
                r._content = b'{"error": {"code": 503, "message": "injected by the test"}}'
                r.headers["Content-Type"] = "application/json"
                r.url = url
                r.request = requests.Request(method, url).prepare()
                return r
        return self._session.request(method, url, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)


@needs_gcs
def test_transient_storage_errors_are_retried_and_never_leave_a_shard_marked_done(
        gcs, corpus, reference, monkeypatch):
    from google.cloud import storage as gcs_client

    for key, value in gcs.env().items():
        monkeypatch.setenv(key, value)
    for path in sorted(glob.glob(corpus[0])):
        gcs.upload_file(path, f"flaky-in/{os.path.basename(path)}")
    bucket = f"gs://{gcs.bucket}"
    opts = prepare.Options(input=f"{bucket}/flaky-in/c*.txt", vocab=corpus[1],
                           output_dir=f"{bucket}/flaky-out", num_workers=1, **SETTINGS)

    def client(rules):
        c = gcs_client.Client()
        flaky = _Flaky(c._http, rules)
        c._http_internal = flaky
        monkeypatch.setattr(storage, "_CLIENT", c)
        return flaky

    # One shard's copy to its final name fails for longer than the retry deadline: the run stops
    # with one line, that shard has neither a final object nor a .done, and nothing temporary
    # is left in the bucket.
    monkeypatch.setattr(storage, "RETRY_DEADLINE", 1.5)
    client({("POST", "part-00002-pass-001.rec."): 10_000})
    with pytest.raises(prepare.UserError, match="part-00002-pass-001.rec"):
        prepare.prepare(opts)
    names = set(gcs.list("flaky-out/"))
    assert "flaky-out/part-00002-pass-001.rec" not in names
    assert "flaky-out/part-00002-pass-001.rec.done" not in names
    assert "flaky-out/metadata.json" not in names and not [n for n in names if ".tmp" in n]
    assert "flaky-out/part-00001-pass-000.rec.done" in names

    # Transient errors on every kind of write (upload, copy, .done) and on reads: retried, and the
    # rerun ends with the reference bytes.
    monkeypatch.setattr(storage, "RETRY_DEADLINE", 60.0)
    flaky = client({("POST", "/upload/"): 3, ("POST", "/rewriteTo/"): 1, ("POST", "/copyTo/"): 1,
                    ("GET", "flaky-in"): 2})
    prepare.prepare(opts)
    assert flaky.injected >= 5
    _assert_like_reference(_bucket_files(gcs, "flaky-out"), reference)
    assert not [n for n in gcs.list("flaky-out/") if ".tmp" in n]


# ------------------------------------------------------------------------------------ bad input


def _bad_inputs(root):
    good, vocab = synthetic_corpus(str(root / "good"), files=2, docs_per_file=5)
    cases = {}
    (root / "latin1.txt").write_bytes("w1 w2 .\nw3 caf\xe9 w4\n\nw5 w6\nw7\n".encode("latin-1"))
    cases["not utf-8"] = (str(root / "latin1.txt"), vocab, "not UTF-8")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    cases["binary input"] = (str(root / "binary.txt"), vocab, "not UTF-8")
    one_doc, _ = synthetic_corpus(str(root / "one"), files=1, docs_per_file=1, sentences=(9, 10))
    cases["one document"] = (one_doc, vocab, "single document")
    singles, _ = synthetic_corpus(str(root / "singles"), files=2, docs_per_file=6,
                                  one_sentence_docs=True)
    cases["no pairs"] = (singles, vocab, "single sentence")
    (root / "notvocab.txt").write_text("hello\nworld\n")
    cases["not a vocab"] = (good, str(root / "notvocab.txt"), "notvocab.txt")
    (root / "binvocab.txt").write_bytes(bytes(range(256)) * 4)
    cases["binary vocab"] = (good, str(root / "binvocab.txt"), "binary")
    cases["missing vocab"] = (good, str(root / "no-vocab.txt"), "no-vocab.txt")
    return cases


@pytest.mark.slow
def test_bad_inputs_on_beam_exit_2_with_the_local_runners_line(tmp_path):
    procs = {}
    cases = _bad_inputs(tmp_path)
    for name, (inp, vocab, _) in cases.items():
        for runner in ("beam", "local"):
            out = tmp_path / f"out-{runner}-{name.replace(' ', '-')}"
            cmd = [sys.executable, "-m", "bertjax.data.prepare", f"--input={inp}",
                   f"--vocab={vocab}", f"--output_dir={out}", f"--runner={runner}",
                   "--num_workers=2", "--dupe_factor=1"]
            procs[name, runner] = (subprocess.Popen(cmd, env=_env(), cwd=REPO,
                                                    stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE, text=True), out)
    said = {}
    for (name, runner), (proc, out) in procs.items():
        _, stderr = proc.communicate(timeout=240)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, (name, runner, stderr[-3000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, runner, stderr[-3000:])
        assert not glob.glob(str(out / "*.done")) and not (out / "metadata.json").exists()
        assert not glob.glob(str(out / "*.rec")) and not glob.glob(str(out / ".*"))
        said[name, runner] = lines[0]
    for name, (_, _, words) in cases.items():
        assert said[name, "beam"] == said[name, "local"], name
        assert words in said[name, "beam"], (name, said[name, "beam"])
