"""Function length in ``src/`` (issue 14): ruff bounds branching (C901) and statements
(PLR0915), but not length in lines, and a function can be long with few statements (one large
call, a long literal). Counted here: the code of a function, from its first statement after
the docstring to its end. Signatures and docstrings are left out, since a Typer command
declares its options in its signature and that makes no function harder to follow."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dlas"
#: The longest code any function may have, in lines.
MAX_LINES = 90


def code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the function's last line."""
    body = function.body
    first = body[0]
    if (
        len(body) > 1
        and isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        first = body[1]
    end = function.end_lineno
    assert end is not None
    return end - first.lineno + 1


def long_functions(root: Path, limit: int) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = code_lines(node)
                if n > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({n})")
    return found


def test_no_function_in_src_is_longer_than_the_limit() -> None:
    assert long_functions(SRC, MAX_LINES) == []


def test_the_count_skips_signature_and_docstring(tmp_path: Path) -> None:
    source = '''
def command(
    a: int = 1,
    b: int = 2,
) -> int:
    """Docstring,

    over lines.
    """
    x = a
    return x + b


def bare():
    return 1
'''
    (tmp_path / "m.py").write_text(source, encoding="utf-8")
    tree = ast.parse(source)
    lengths = {
        node.name: code_lines(node) for node in tree.body if isinstance(node, ast.FunctionDef)
    }
    assert lengths == {"command": 2, "bare": 1}
    assert long_functions(tmp_path, 1) == [f"{tmp_path.name}/m.py:2 command (2)"]
