"""The size goals of the code (issue 19): no Python or dashboard JS file over 400 lines outside
the tests, no Python function over 60 lines (its ``def`` line to its last line, nested functions
counted in their parent too). Lists what is over, one line each; exit status 1 if anything is.
Installed packages (frontend/node_modules) are not ours and not counted.

    python .ci/sizes.py [PACKAGE ...]    (default: the four packages and bench/)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["controlplane", "nodeworker", "frontend", "dlrm_core", "bench"]
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def oversized(path: Path) -> list[str]:
    text = path.read_text()
    name = path.relative_to(ROOT)
    found = []
    lines = text.count("\n")
    if lines > MAX_FILE_LINES:
        found.append(f"{name}: file of {lines} lines")
    if path.suffix != ".py":
        return found
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno}: {node.name}() of {length} lines")
    return found


def main(argv: list[str]) -> int:
    found = []
    for package in argv or PACKAGES:
        paths = [*(ROOT / package).rglob("*.py"), *(ROOT / package).rglob("*.js")]
        for path in sorted(p for p in paths if "node_modules" not in p.parts):
            found += oversized(path)
    print("\n".join(found) if found else "every file and function within the size goals")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
