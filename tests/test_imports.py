"""The import rule: module level, except what is heavy or optional (each such import says why).

An import inside a function must name one of the modules below; anything else belongs at the
top of its module. The reasons are in comments beside the imports."""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Heavy (seconds, or hundreds of MB in every worker) or optional (not in requirements.txt, or
# broken by some installs), or bertjax modules that bring those in, or an import cycle.
LAZY_OK = (
    "tensorflow", "tensorflow_datasets", "apache_beam", "google.cloud", "google.api_core",
    "torch", "transformers", "sentence_transformers", "gensim", "matplotlib", "sentencepiece", "orbax",
    "jax.experimental.pallas",
    "bertjax.data.pipeline", "bertjax.data.stream", "bertjax.data.tf_runtime",  # TensorFlow
    "bertjax.load.model_files", "bertjax.tools.embed",  # Orbax (tools/export.load_export)
    "bertjax.interop.tf_checkpoint",  # TensorFlow
    "bertjax.text.sentencepiece_tok",  # sentencepiece
)


def _function_imports():
    for path in sorted((ROOT / "bertjax").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        yield path, node.lineno, alias.name
                elif isinstance(node, ast.ImportFrom):
                    # `from bertjax.data import pipeline` is an import of bertjax.data.pipeline.
                    for alias in node.names:
                        yield path, node.lineno, f"{node.module}.{alias.name}"


def test_function_level_imports_are_only_heavy_or_optional_ones():
    bad = sorted({f"{p.relative_to(ROOT)}:{line} imports {name}"
                  for p, line, name in _function_imports()
                  if not any(name == m or name.startswith(m + ".") for m in LAZY_OK)})
    assert not bad, "move to module level (or say why it must wait):\n" + "\n".join(bad)


def _module_name(path: pathlib.Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _top_level_graph() -> dict[str, set[str]]:
    """bertjax module -> the bertjax modules it imports at module level (what runs on import)."""
    paths = {_module_name(p): p for p in (ROOT / "bertjax").rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                # `from bertjax.train import loop` imports the submodule bertjax.train.loop.
                subs = {f"{node.module}.{a.name}" for a in node.names} & paths.keys()
                deps.update(subs or {node.module})
        # A package's own __init__ is running already when its submodules load: not an edge.
        graph[name] = {d for d in deps if d in paths and d != name and
                       not name.startswith(d + ".")}
    return graph


def test_module_level_imports_have_no_cycle():
    # A cycle of module-level imports breaks whichever of its modules is imported first.
    graph = _top_level_graph()
    assert "bertjax.train.loop" in graph["bertjax.pretrain"]  # the graph sees submodule imports
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_load_export_needs_no_orbax():
    code = ("import sys, bertjax.tools.export; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'orbax']; "
            "print(bad[:3]); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
