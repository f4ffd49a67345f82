"""Print the import cycles of vermas' own packages and every import made inside a function.

Why: imports inside functions hide cycles from a reader and from Python (they only fail at
run time, in the branch that runs them). This walks the source with `ast`, counts top-level
and in-function imports alike, and reports the strongly connected components of the module
graph that hold more than one module (or a module importing itself).

Usage: python scripts/import_cycles.py [ROOT]   (ROOT defaults to the repository root)
Exit status 1 when a cycle exists.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("vermas", "vermas_mcp", "vermas_runner")


@dataclass(frozen=True)
class Import:
    """One import statement: who imports what, and whether it sits inside a function."""

    module: str
    target: str
    line: int
    in_function: bool
    comment: str = ""


@dataclass
class Graph:
    """The module graph of the scanned packages."""

    modules: set[str] = field(default_factory=set)
    imports: list[Import] = field(default_factory=list)

    def edges(self) -> dict[str, set[str]]:
        """Importing a.b.c also runs the __init__ of packages a and a.b (those that are not
        the importer's own packages, which are already being imported), so those count too."""
        out: dict[str, set[str]] = {m: set() for m in self.modules}
        for imp in self.imports:
            if imp.target not in self.modules:
                continue
            out[imp.module].add(imp.target)
            parts = imp.target.split(".")
            for i in range(1, len(parts)):
                package = ".".join(parts[:i])
                if package in self.modules and not (imp.module + ".").startswith(package + "."):
                    out[imp.module].add(package)
        return out


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(modules: set[str], name: str) -> str | None:
    """The longest known module that `name` names (a.b.c -> a.b when c is an attribute)."""
    while name:
        if name in modules:
            return name
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return None


def _targets(node: ast.Import | ast.ImportFrom, this: str, is_pkg: bool, modules: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = this.split(".") if is_pkg else this.split(".")[:-1]
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([base] if base else []))
        # `from pkg import sub` imports the submodule pkg.sub when it exists
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = [_resolve(modules, n) for n in names]
    return sorted({f for f in found if f and f != this})


def _walk(tree: ast.AST, in_function: bool = False):
    for child in ast.iter_child_nodes(tree):
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        yield from _walk(child, inner)


def _is_type_checking(tree: ast.Module) -> set[int]:
    """Lines of imports under `if TYPE_CHECKING:` (never run, so no cycle at run time)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    lines.add(sub.lineno)
    return lines


def scan(root: Path) -> Graph:
    files = {module_name(root, p): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}
    graph = Graph(modules=set(files))
    for mod, path in files.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source, str(path))
        skip = _is_type_checking(tree)
        for node, in_function in _walk(tree):
            if node.lineno in skip:
                continue
            text = lines[node.lineno - 1]
            comment = text.split("#", 1)[1].strip() if "#" in text else ""
            targets = _targets(node, mod, path.name == "__init__.py", graph.modules)
            for target in targets:
                graph.imports.append(Import(mod, target, node.lineno, in_function, comment))
            if not targets:  # an outside package (stdlib, mcp, rich...): kept for the listings
                name = node.names[0].name if isinstance(node, ast.Import) else (node.module or ".")
                graph.imports.append(Import(mod, name, node.lineno, in_function, comment))
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    edges = graph.edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    result.append(sorted(comp))
    return sorted(result)


def in_function_imports(graph: Graph) -> list[Import]:
    seen: dict[tuple[str, int], Import] = {}
    for imp in graph.imports:
        if imp.in_function:
            seen.setdefault((imp.module, imp.line), imp)
    return sorted(seen.values(), key=lambda i: (i.module, i.line))


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
    graph = scan(root)
    found = cycles(graph)
    print(f"modules: {len(graph.modules)}  import edges: {sum(len(v) for v in graph.edges().values())}")
    print(f"import cycles (strongly connected components): {len(found)}")
    for comp in found:
        print("  " + " <-> ".join(comp))
    inner = in_function_imports(graph)
    print(f"in-function imports: {len(inner)}")
    for imp in inner:
        note = f"  # {imp.comment}" if imp.comment else ""
        print(f"  {imp.module}:{imp.line} -> {imp.target}{note}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
