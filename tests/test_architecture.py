"""The package's import graph: data flows one way, so no module imports (even inside a function) one that
imports it back, not even for type hints (``if TYPE_CHECKING:``)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bench"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bench"):
            if node.module == "bench":
                found |= {f"bench.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("bench.")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {f"bench.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
            if nxt not in state and (found := visit(nxt, trail + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_report_and_plots_read_the_run_directory_not_each_other():
    graph = _graph()
    assert "bench.report" not in graph["bench.plots"]
    assert "bench.rundir" in graph["bench.plots"] and "bench.rundir" in graph["bench.report"]


def test_the_paradigm_contract_depends_on_no_stage_module():
    """A plugin author reads bench/contract.py alone: what it hands a paradigm is described there (protocols),
    not imported from the split, encoder or LLM modules."""
    assert _graph()["bench.contract"] <= {"bench.config", "bench.errors"}
