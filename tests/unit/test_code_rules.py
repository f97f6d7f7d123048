"""Rules of the code base that a reviewer would otherwise have to check by eye.

- Nothing is ever set on a Paramiko object: the daemon's own state lives in classes that declare
  it (``ssh/transport.py``). Setting one of Paramiko's own attributes (``banner_timeout``) is its API.
- No module under ``plugins/`` has more than 400 lines of code (documentation strings excluded).
- No ``select.select`` on the controller's side: it raises ``ValueError`` for a descriptor from 1024
  on, which a daemon holding a thousand transports has (``selectors`` or ``poll`` instead). The
  remote executor, on the target, holds a handful of descriptors and may use it.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import tokenize
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import paramiko
import pytest

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
MAX_CODE_LINES = 400
#: Modules over the limit that their owners have yet to split, with their size when this list was
#: written: each may only shrink, and must leave the list once it is under the limit.
OVER_THE_LIMIT = {"module_utils/_diagnose_checks.py": 708}

#: Paramiko classes, by how the code names their instances when no annotation says.
PARAMIKO_BY_NAME = {
    "transport": paramiko.Transport,
    "chan": paramiko.Channel,
    "channel": paramiko.Channel,
    "sftp": paramiko.SFTPClient,
}
PARAMIKO_BY_ANNOTATION = {
    "Transport": paramiko.Transport,
    "Channel": paramiko.Channel,
    "SFTPClient": paramiko.SFTPClient,
}


def _own_attributes(cls: type) -> Set[str]:
    """Attributes the Paramiko class sets on itself (public configuration such as ``banner_timeout``)."""
    names: Set[str] = set(dir(cls))
    for klass in cls.__mro__:
        try:
            names.update(re.findall(r"self\.(\w+)\s*=", inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
    return names


def _annotation_class(annotation: Optional[ast.expr]) -> Optional[type]:
    if annotation is None:
        return None
    text = ast.unparse(annotation)
    for name, cls in PARAMIKO_BY_ANNOTATION.items():
        if re.search(rf"\bparamiko\.{name}\b", text):
            return cls
    return None


def _typed_names(func: ast.AST) -> Dict[str, type]:
    """Names a function annotates as Paramiko objects (arguments and annotated assignments)."""
    found: Dict[str, type] = {}
    if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = func.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
            cls = _annotation_class(arg.annotation)
            if cls is not None:
                found[arg.arg] = cls
    for node in ast.walk(func):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            cls = _annotation_class(node.annotation)
            if cls is not None:
                found[node.target.id] = cls
    return found


def _paramiko_class(value: ast.expr, typed: Dict[str, type]) -> Optional[type]:
    if isinstance(value, ast.Name):
        return typed.get(value.id) or PARAMIKO_BY_NAME.get(value.id)
    if isinstance(value, ast.Attribute):
        return PARAMIKO_BY_NAME.get(value.attr)
    return None


def attributes_set_on_paramiko(source: str) -> List[Tuple[int, str]]:
    """(line, "name.attr") of every assignment of an attribute Paramiko does not define itself."""
    tree = ast.parse(source)
    bad: List[Tuple[int, str]] = []
    scopes: List[ast.AST] = [
        tree,
        *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))),
    ]
    seen: Set[int] = set()
    for scope in scopes:
        typed = _typed_names(scope)
        for node in ast.walk(scope):
            targets: List[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "setattr"
                and node.args
                and _paramiko_class(node.args[0], typed) is not None
            ):
                bad.append((node.lineno, f"setattr({ast.unparse(node.args[0])}, ...)"))
            for target in targets:
                for t in ast.walk(target):
                    if not isinstance(t, ast.Attribute) or id(t) in seen:
                        continue
                    cls = _paramiko_class(t.value, typed)
                    if cls is not None and t.attr not in _own_attributes(cls):
                        seen.add(id(t))
                        bad.append((t.lineno, f"{ast.unparse(t.value)}.{t.attr}"))
    return bad


def plugin_files() -> Iterator[Path]:
    yield from sorted(p for p in PLUGINS.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", list(plugin_files()), ids=lambda p: str(p.relative_to(PLUGINS)))
def test_nothing_is_set_on_paramiko_objects(path: Path) -> None:
    assert attributes_set_on_paramiko(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("def f(t: paramiko.Transport):\n    t.pooled_conn = 1\n", [(2, "t.pooled_conn")]),
        ("chan.pooled_spare = True\n", [(1, "chan.pooled_spare")]),
        ("self.transport.owner = self\n", [(1, "self.transport.owner")]),
        ("setattr(chan, 'x', 1)\n", [(1, "setattr(chan, ...)")]),
        ("transport.banner_timeout = 5\n", []),
        ("self.spare = None\nentry.conn.settings = s\n", []),
    ],
)
def test_the_scan_finds_what_it_must(snippet: str, expected: List[Tuple[int, str]]) -> None:
    assert attributes_set_on_paramiko(snippet) == expected


def code_lines(source: str) -> int:
    """Lines that hold code: no blank lines, comments, docstrings or module-level documentation strings."""
    tree = ast.parse(source)
    excluded: Set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(getattr(body[0], "value", None), ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            excluded.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            excluded.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    lines: Set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (
            tokenize.COMMENT,
            tokenize.NL,
            tokenize.NEWLINE,
            tokenize.INDENT,
            tokenize.DEDENT,
            tokenize.ENDMARKER,
        ):
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines - excluded)


@pytest.mark.parametrize("path", list(plugin_files()), ids=lambda p: str(p.relative_to(PLUGINS)))
def test_no_module_over_400_lines_of_code(path: Path) -> None:
    lines = code_lines(path.read_text(encoding="utf-8"))
    known = OVER_THE_LIMIT.get(str(path.relative_to(PLUGINS)))
    if known is None:
        assert lines <= MAX_CODE_LINES, f"{lines} lines of code: split the module"
    else:
        assert MAX_CODE_LINES < lines <= known, f"{lines} lines of code: update OVER_THE_LIMIT"


#: Modules that run on the target, not in the daemon or a worker.
ON_THE_TARGET = {"plugin_utils/executor/remote.py", "plugin_utils/executor/remote_child.py"}


@pytest.mark.parametrize("path", list(plugin_files()), ids=lambda p: str(p.relative_to(PLUGINS)))
def test_no_select_select_on_the_controller(path: Path) -> None:
    if str(path.relative_to(PLUGINS)) in ON_THE_TARGET:
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "select"
        and isinstance(node.value, ast.Name)
        and node.value.id == "select"
    ]
    assert not calls, f"select.select at lines {calls}: use selectors or frames.peer_closed"


def test_code_lines_counts_code_only() -> None:
    source = (
        '"""Doc\n\nmore."""\n\nDOCUMENTATION = r"""\na: b\n"""\n# comment\n\nx = 1\n\n\n'
        'def f():\n    """Doc."""\n    return (\n        2)\n'
    )
    assert code_lines(source) == 4
