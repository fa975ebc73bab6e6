"""The package's layout rules (CONTRIBUTING.md, STYLE.md), checked on its source.

- No module of ``ats_cffi/`` (Python or C) is over 600 lines, and no function over 80.
- A module owns its fields: no other module of the package (nor ``perf/``, which drives the
  same objects) reads or writes a private field or method of the IOBuffer classes; the
  per-event path calls their trusted methods (``commit``, ``advance``, ...) instead.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ats_cffi"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def sources(*suffixes: str) -> list[Path]:
    return sorted(p for s in suffixes for p in PACKAGE.rglob(f"*{s}") if "build" not in p.parts)


def python_functions(path: Path) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function and method in ``path``."""
    out: list[tuple[str, int]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                out.append((name, child.end_lineno - child.lineno + 1))  # type: ignore[operator]
                walk(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".")
            else:
                walk(child, prefix)

    walk(ast.parse(path.read_text()), "")
    return out


_C_FUNCTION = re.compile(r"^[A-Za-z_][\w \*]*\b(\w+)\s*\([^;]*$")


def c_functions(path: Path) -> list[tuple[str, int]]:
    """``(name, lines)`` of every function defined at file scope in the C source ``path``:
    from its signature's first line to the brace that closes its body."""
    out: list[tuple[str, int]] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _C_FUNCTION.match(lines[i])
        if m is None or lines[i].startswith(("#", "struct ", "typedef ")):
            i += 1
            continue
        start, depth, opened = i, 0, False
        while i < len(lines):
            depth += lines[i].count("{") - lines[i].count("}")
            opened = opened or "{" in lines[i]
            if opened and depth == 0:
                break
            if not opened and lines[i].rstrip().endswith(";"):
                break  # a declaration, not a definition
            i += 1
        if opened:
            out.append((m[1], i - start + 1))
        i += 1
    return out


@pytest.mark.parametrize("path", sources(".py", ".c", ".h"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_600_lines(path: Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {n} lines: split it along a seam"


def test_no_function_is_over_80_lines() -> None:
    long = [
        f"{p.relative_to(ROOT)}: {name} ({n} lines)"
        for p in sources(".py")
        for name, n in python_functions(p)
        if n > MAX_FUNCTION_LINES
    ] + [
        f"{p.relative_to(ROOT)}: {name} ({n} lines)"
        for p in sources(".c")
        for name, n in c_functions(p)
        if n > MAX_FUNCTION_LINES
    ]
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_the_c_function_scan_sees_every_helper() -> None:
    # The scan above must not miss a function it could not parse: every ats_* helper the
    # cdef declares is found in the C sources with a body.
    declared = {
        m[1]
        for h in sources(".h")
        for m in re.finditer(r"(?m)^[A-Za-z_][\w \*]*\b(ats_\w+)\s*\(", h.read_text())
    }
    found = {name for p in sources(".c") for name, _ in c_functions(p)}
    assert declared and declared <= found, sorted(declared - found)


#: The IOBuffer classes, by the module that owns their private fields.
IOBUFFER_CLASSES = {
    PACKAGE / "eventsystem" / "iobuffer.py": ("MIOBuffer", "IOBufferReader", "_Cursor"),
    PACKAGE / "eventsystem" / "ioblock.py": ("IOBufferBlock",),
}


def private_names(path: Path, classes: tuple[str, ...]) -> set[str]:
    """The private fields (``__slots__``) and methods of ``classes``, defined in ``path``."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if not (isinstance(node, ast.ClassDef) and node.name in classes):
            continue
        for item in node.body:
            if isinstance(item, ast.FunctionDef):
                names.add(item.name)
            elif isinstance(item, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in item.targets
            ):
                names.update(ast.literal_eval(item.value))
    return {n for n in names if n.startswith("_") and not n.endswith("__")}


def test_the_iobuffer_private_names_are_found() -> None:
    found = set().union(*(private_names(p, c) for p, c in IOBUFFER_CLASSES.items()))
    assert {"_written", "_tail", "_pos", "_block", "_off", "_cdata", "_first"} <= found


@pytest.mark.parametrize("owner", list(IOBUFFER_CLASSES), ids=lambda p: p.name)
def test_no_other_module_touches_the_iobuffer_classes_private_fields(owner: Path) -> None:
    private = private_names(owner, IOBUFFER_CLASSES[owner])
    modules = [p for p in sources(".py") if p != owner] + sorted((ROOT / "perf").glob("*.py"))
    found = []
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in private
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
    assert not found, f"private fields of {owner.name}'s classes used elsewhere:\n" + "\n".join(
        found
    )
