"""Issue 10: billing/pricing.py and billing/invoice.py no longer import each other (billing/lines.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import apimon_cli.billing as billing

BILLING = Path(billing.__file__).parent


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """(modules imported at module level, imports made inside functions) of one file, as dotted names."""
    tree = ast.parse(path.read_text())
    top, late = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            name = ("." * node.level) + (node.module or "")
            names = {name.replace("apimon_cli.billing.", ".")}
        elif isinstance(node, ast.Import):
            names = {a.name for a in node.names}
        else:
            continue
        (top.update if node in tree.body else late.extend)(names)
    return top, late


def test_no_cycle_and_no_late_import_between_pricing_and_invoice():
    pricing_top, pricing_late = _imports(BILLING / "pricing.py")
    invoice_top, invoice_late = _imports(BILLING / "invoice.py")
    lines_top, _ = _imports(BILLING / "lines.py")
    assert ".invoice" not in pricing_top and ".lines" in pricing_top
    assert ".pricing" in invoice_top and ".lines" in invoice_top
    assert not [m for m in pricing_late + invoice_late if "pricing" in m or "invoice" in m or "currency" in m]
    assert not {m for m in lines_top if "pricing" in m or "invoice" in m}


def test_each_module_imports_first_on_its_own():
    for module in ("pricing", "invoice", "lines"):
        code = f"import apimon_cli.billing.{module} as m; from apimon_cli.billing import InvoiceLine; print(m.__name__)"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    from apimon_cli.billing.invoice import InvoiceLine as A
    from apimon_cli.billing.lines import InvoiceLine as B
    from apimon_cli.billing.pricing import InvoiceLine as C

    assert A is B is C
