"""Each service owns its tables and is reached through its client, read from the source itself:
no service's SQL, nor the root package's (the CLI, ``follow``, ``liveness``), names a table whose
migration another owner holds, and the gateway, diagnostics and the root package import from the
orchestrator's distribution its client alone (never its shell or core)."""

from __future__ import annotations

import ast
import re
from importlib import metadata, resources
from pathlib import Path

import pytest

from posttrain.service.migrate import ENTRY_POINT_GROUP, migration_sets

ROOT = Path(__file__).parents[2]
SERVICES = ROOT / "services"
_CREATED = re.compile(r"\bCREATE\s+(?:TABLE|VIEW)\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.I)
_NAMED = r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE|regclass\(')\s*{table}\b"


def _tables_by_owner() -> dict[str, set[str]]:
    owned: dict[str, set[str]] = {}
    for s in migration_sets():
        owned[s.owner] = {s.ledger} | {t for m in s.migrations for t in _CREATED.findall(m.sql)}
    return owned


def _package_dir_of(owner: str) -> Path | None:
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == owner:
            return Path(str(resources.files(entry.value)))
    return None


def _strings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def _service_packages() -> list[Path]:
    return sorted(p for p in SERVICES.glob("*/posttrain/*") if p.is_dir())


def _packages_with_sql() -> list[Path]:
    """Every service's package, and the root package (which owns no tables)."""
    return [*_service_packages(), ROOT / "src" / "posttrain"]


def test_every_owner_of_tables_is_found() -> None:
    owned = _tables_by_owner()
    assert {"metrics", "metric_jobs"} <= owned["metrics_ingest"]
    assert {"pipelines", "pipeline_stages", "agents"} <= owned["orchestrator"]
    assert "anomalies" in owned["diagnostics"]


@pytest.mark.parametrize("package", _packages_with_sql(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_package_names_no_other_owners_table_in_sql(package: Path) -> None:
    others = {
        table: owner
        for owner, tables in _tables_by_owner().items()
        if _package_dir_of(owner) != package
        for table in tables
    }
    found = []
    for path in sorted(package.rglob("*.py")):
        for text in _strings(path):
            for table, owner in others.items():
                if re.search(_NAMED.format(table=re.escape(table)), text, re.I):
                    found.append(f"{path.relative_to(ROOT)}: {owner}'s {table}")
    assert found == []


def _imported_modules(path: Path) -> set[str]:
    """The modules a file imports (``from a.b import c`` counts ``a.b.c`` when ``a.b`` is only a
    namespace package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.count(".") < 2:
                found |= {f"{node.module}.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return found


@pytest.mark.parametrize(
    "package",
    [
        SERVICES / "gateway" / "posttrain" / "gateway",
        SERVICES / "diagnostics" / "posttrain" / "diagnostics",
        ROOT / "src" / "posttrain",
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_other_packages_reach_the_orchestrator_through_its_client(package: Path) -> None:
    reached = {
        ".".join(module.split(".")[:3])
        for path in package.rglob("*.py")
        for module in _imported_modules(path)
        if module.startswith("posttrain.orchestrator.")
    }
    assert reached == {"posttrain.orchestrator.client"}
