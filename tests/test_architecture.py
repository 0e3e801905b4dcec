"""The package's shape: no import circle, `actions` never imports `latticeflow`, and no module of
`latticeflow/` branches on a theory or sampler name outside the registries and the flow-family table."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the only places that may name theories or samplers in code
REGISTRIES = {"latticeflow/samplers/__init__.py", "latticeflow/flows/families.py", "latticeflow/flows/build.py"}


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package imported anywhere in ``path`` (module level and inside functions)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - node.level + 1]
                mod = ".".join(stem + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = {**_modules("latticeflow"), **_modules("actions")}
    known = set(mods)
    graph = {name: _imports(name, path, known) for name, path in mods.items()}
    # a package's __init__ importing its own submodules is not a circle with them
    return {n: {d for d in deps if not d.startswith(n + ".")} for n, deps in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if state.get(d) is None:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if state.get(n) is None:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_circle():
    graph = _graph()
    # parents import their children: drop edges child -> ancestor package that only re-exports
    cycle = _cycle({n: {d for d in deps if not n.startswith(d + ".")} for n, deps in graph.items()})
    assert cycle is None, " -> ".join(cycle)


def test_actions_never_import_latticeflow():
    for name, deps in _graph().items():
        if name.split(".")[0] == "actions":
            assert not any(d.startswith("latticeflow") for d in deps), name


NAMES = r"""["'](phi4|u1|gmm|hmc|nmcmc|flow|cluster)["']"""
COMPARE = re.compile(rf"""(==|!=|\bin\b|\bnot in\b)\s*\(?\s*{NAMES}|{NAMES}\s*(==|!=)|theory\s*(==|!=)\s*["']""")


def test_no_theory_or_sampler_name_is_compared_outside_the_registries():
    offenders = []
    for name, path in _modules("latticeflow").items():
        rel = str(path.relative_to(ROOT))
        if rel in REGISTRIES:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if COMPARE.search(code):
                offenders.append(f"{rel}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
