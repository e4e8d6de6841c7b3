"""The shape of the code base: dependencies point one way (service → workers → scoring, storage),
no import cycles, storage paths built only in storage/layout.py, no block of code written twice."""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("thresher", "service", "workers", "scoring", "storage")
# What each layer may import from the project (besides itself). The client (thresher) talks HTTP
# and reads storage only through storage/layout; the service's CLI is built on the client.
ALLOWED = {"thresher": {"storage"}, "service": {"thresher", "workers", "storage", "scoring"},
           "workers": {"scoring", "storage"}, "scoring": set(), "storage": set()}


def product_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules that `path` imports anywhere (function-level imports too: a lazy import that
    dodges a cycle is still a cycle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in product_files()}
    return {m: imports(p, set(files)) - {m} for m, p in files.items()}


def test_dependencies_point_one_way():
    wrong = [(m, d) for m, deps in graph().items() for d in deps
             if d.split(".")[0] != m.split(".")[0] and d.split(".")[0] not in ALLOWED[m.split(".")[0]]]
    assert not wrong, wrong


def test_storage_and_scoring_stay_below_the_service():
    heavy = {"storage": ("torch", "fastapi", "ray"), "scoring": ("fastapi", "ray", "duckdb")}
    for pkg, banned in heavy.items():
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text()
            for name in banned:
                assert not re.search(rf"^\s*(import|from) {name}\b", text, re.M), f"{path} imports {name}"


def test_no_import_cycles():
    g = graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, cycles


# A storage path is a tuple of parts: its first part names a top folder, or a file is named with a
# shard number. Only storage/layout.py may spell those.
PATH_PATTERNS = [
    re.compile(r'(?<![\w.])\(\s*"(corpora|jobs|manifests|models|curricula)"\s*,'),   # ("corpora", id, …)
    re.compile(r'"(part|shard|epoch|pilot)-'),                                        # numbered file names
    re.compile(r'f"(part|shard|epoch|pilot)-'),
    re.compile(r'\.split\("-"\)'),                                                   # parsing them
    re.compile(r'\bstore\.\w+\(\s*f?"'),                                              # store.read_bytes("jobs", …)
    re.compile(r'\b(store|layout)\..*"[\w/-]+\.(parquet|json|npz|npy|png|safetensors)"'),  # file names
]


def test_storage_paths_are_built_only_in_the_layout_module():
    offenders = []
    for path in product_files():
        if path.relative_to(ROOT).as_posix() == "storage/layout.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(p.search(code) for p in PATH_PATTERNS):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def _significant(line: str) -> str:
    """A line as the copy scan sees it: stripped; imports and docstring quotes count as blank."""
    text = line.strip()
    return "" if re.match(r'(import |from \S+ import |"""$)', text) else text


def test_no_block_of_four_lines_is_written_twice():
    """Exact copies of four or more consecutive non-blank lines in product code. Lines that carry
    no logic of their own (closing brackets, `else:`, docstring quotes) do not start or make up a
    match on their own: a window must hold at least three lines of ten characters or more."""
    seen: dict[tuple, list[str]] = defaultdict(list)
    for path in product_files():
        lines = [(n, _significant(t)) for n, t in enumerate(path.read_text().splitlines(), 1)]
        lines = [(n, t) for n, t in lines if t and not t.startswith("#")]
        for i in range(len(lines) - 3):
            window = tuple(t for _, t in lines[i:i + 4])
            if sum(len(t) >= 10 for t in window) >= 3:
                seen[window].append(f"{path.relative_to(ROOT)}:{lines[i][0]}")
    copies = {w: places for w, places in seen.items() if len(places) > 1}
    assert not copies, "\n\n".join(f"{places}:\n" + "\n".join(w) for w, places in copies.items())
