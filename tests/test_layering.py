"""The package's layering, checked from the source (docs/design/layout.md): aiohttp's server
lives in csvstore/web/ only, no import cycles (imports inside functions and under
TYPE_CHECKING count), no module over 700 lines, and web/ reaches storage and the database
only through the service."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "csvstore"
MAX_LINES = 700
# Comments and docstrings as a share of non-blank lines: the essays live in docs/design/.
MAX_PROSE = 0.10


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module the file imports, anywhere in it (csvstore's and third parties')."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # ``from csvstore.web import schemas`` imports the module csvstore.web.schemas
            names.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if f"{node.module}.{alias.name}" in MODULES
                or (node.module == "aiohttp" and alias.name == "web")
            )
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; csvstore imports absolutely")
    return names


def _graph() -> dict[str, set[str]]:
    return {
        name: {i for i in _imports(path) if i in MODULES and i != name and i != "csvstore"}
        for name, path in MODULES.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_walk_sees_every_module_and_its_imports() -> None:
    # A guard for the guards below: a walker that found nothing would pass them all.
    assert len(MODULES) > 30
    assert "csvstore.web.routes" in _graph()["csvstore.web.app"]
    assert "aiohttp.web" in _imports(MODULES["csvstore.web.app"])


def test_aiohttp_is_imported_only_by_the_web_layer_and_the_client() -> None:
    outside = {
        name: sorted(i for i in _imports(path) if _in(i, "aiohttp"))
        for name, path in MODULES.items()
        if not _in(name, "csvstore.web") and not _in(name, "csvstore.cli")
    }
    assert {name: found for name, found in outside.items() if found} == {}


def test_the_client_does_not_import_the_server() -> None:
    server_side = {
        name: sorted(i for i in _imports(path) if _in(i, "aiohttp.web") or _in(i, "csvstore.web"))
        for name, path in MODULES.items()
        if _in(name, "csvstore.cli")
    }
    assert {name: found for name, found in server_side.items() if found} == {}


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_over_700_lines() -> None:
    lengths = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def _reaches_past_the_service(path: Path) -> list[str]:
    """Where a module reaches past the service: an import of a database or storage module,
    or an attribute read of the store's database, repo, storage or resumable store."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in ("storage", "db", "repo", "partials"):
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            ("csvstore.storage", "csvstore.db")
        ):
            found.append(f"{path.name}:{node.lineno} imports {node.module}")
    return sorted(found)


def test_the_web_layer_goes_through_the_service() -> None:
    web = [path for name, path in MODULES.items() if _in(name, "csvstore.web")]
    assert len(web) > 10
    assert [reach for path in web for reach in _reaches_past_the_service(path)] == []


def test_the_service_guard_sees_a_reach(tmp_path: Path) -> None:
    reach = tmp_path / "reach.py"
    reach.write_text("from csvstore.db.repo import Repo\nstore.storage.read(key)\nx.partials\n")
    assert _reaches_past_the_service(reach) == [
        "reach.py:1 imports csvstore.db.repo",
        "reach.py:2 .storage",
        "reach.py:3 .partials",
    ]


def _prose_lines(source: str) -> tuple[int, int]:
    """(non-blank lines, of which comment or docstring lines)."""
    lines = source.splitlines()
    nonblank = {n for n, line in enumerate(lines, 1) if line.strip()}
    prose = {
        tok.start[0]
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                prose.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return len(nonblank), len(prose & nonblank)


def test_prose_is_at_most_a_tenth_of_the_package() -> None:
    counts = [_prose_lines(path.read_text()) for path in MODULES.values()]
    code, prose = sum(c for c, _ in counts), sum(p for _, p in counts)
    assert prose / code <= MAX_PROSE, f"{prose} of {code} non-blank lines are prose"


def test_the_prose_count_sees_comments_and_docstrings() -> None:
    source = '"""Module."""\n\n\ndef f():\n    """Two\n    lines."""\n    return 1  # why\n'
    assert _prose_lines(source) == (5, 4)


def test_the_query_engine_knows_no_http_database_or_storage() -> None:
    # Issue 20: csvstore/query/ gets local paths and dialects; the service does the rest.
    query = {name: path for name, path in MODULES.items() if _in(name, "csvstore.query")}
    assert "csvstore.query.engine" in query
    banned = ("aiohttp", "csvstore.web", "csvstore.db", "csvstore.storage", "csvstore.service")
    found = {
        name: sorted(i for i in _imports(path) if any(_in(i, b) for b in banned))
        for name, path in query.items()
    }
    assert {name: f for name, f in found.items() if f} == {}
