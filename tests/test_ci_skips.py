"""The CI skip check (tests/ci_skips.py), run on a scratch test directory in a child pytest: under
CI=1 or CI=true a skip that is not allow-listed fails the run and is named; an allow-listed skip,
an xfail and a pass do not; outside CI nothing fails. Also: the fake GCS needs no `openssl`."""
import os
import subprocess
import sys

import ci_skips

HERE = os.path.dirname(os.path.abspath(__file__))

SCRATCH = {
    "test_some.py": '''
import pytest

def test_passes():
    pass

def test_needs_a_unicorn():
    pytest.skip("no unicorn on this box")

@pytest.mark.skipif(True, reason="marked: no dragon here")
def test_needs_a_dragon():
    pass

def test_on_a_tpu_vm():
    pytest.skip("this machine has TPU chips")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug():
    assert False
''',
    "test_module_skip.py": '''
import pytest
pytest.importorskip("no_such_module_here_at_all")

def test_never_collected():
    pass
''',
}


def _pytest(tmp_path, ci):
    for name, text in SCRATCH.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS",
                                                              "PYTEST_XDIST_WORKER")}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([HERE, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "ci_skips", "-p",
                           "no:cacheprovider", "-q", "-rsf", "--rootdir", str(tmp_path),
                           "-c", os.devnull, str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_under_ci_a_skip_fails_the_run_and_is_named(tmp_path):
    for ci in ("1", "true", "TRUE"):
        r = _pytest(tmp_path, ci)
        out = r.stdout + r.stderr
        assert r.returncode == 1, out
        assert "skipped in CI, which fails the run: no unicorn on this box" in out, out
        assert "skipped in CI, which fails the run: marked: no dragon here" in out, out
        # A module skipped whole: the run goes on, then fails naming it.
        assert "modules skipped in CI, which fails the run" in out, out
        assert "test_module_skip.py: could not import 'no_such_module_here_at_all'" in out
        # A skip in a test fails it; a skip mark fails its setup (an error).
        assert "1 passed" in out and "1 xfailed" in out, out
        assert "1 failed" in out and "1 error" in out, out
        # The allow-listed skip and the module's skip are reported as skips.
        assert "2 skipped" in out and "this machine has TPU chips" in out, out


def test_outside_ci_skips_stay_skips(tmp_path):
    for ci in (None, "", "0", "false"):
        r = _pytest(tmp_path, ci)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        assert "1 passed" in out and "4 skipped" in out and "1 xfailed" in out, out
        assert "no unicorn on this box" in out  # -rs names every skip


def test_every_allowed_skip_says_why():
    assert ci_skips.ALLOWED
    for pattern, why in ci_skips.ALLOWED:
        assert pattern and len(why.split()) >= 8, (pattern, why)
    assert ci_skips.why_allowed("Skipped: this machine has TPU chips")
    for reason in ("fake GCS server cannot run here: not ready after 60s",
                   "could not import 'torch': No module named 'torch'",
                   "the openssl command is needed"):
        assert ci_skips.why_allowed(reason) is None, reason


def test_the_fake_gcs_certificate_is_made_without_openssl(tmp_path, monkeypatch):
    """The TLS certificate comes from Python; with no `openssl` on PATH the fake still starts
    its proxy, and a missing command is never a reason to skip."""
    import ssl

    import fake_gcs

    monkeypatch.setenv("PATH", str(tmp_path))  # no openssl (nor anything else) on PATH
    cert, key = fake_gcs._make_certificate(str(tmp_path))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)  # a key that matches its certificate
    client = ssl.create_default_context(cafile=cert)  # and a CA that a client can trust
    assert client.cert_store_stats()["x509_ca"] == 1
    assert fake_gcs.unavailable_reason() is None
