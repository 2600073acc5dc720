"""The own model files (`hf_tsprune/models/*.py`) follow transformers' single-file policy: each is shipped verbatim as
remote code beside pruned checkpoints, so none imports another, and a class or function copied from another model
file is marked `# Copied from hf_tsprune.models.<module>.<name>[ with A->B[, C->D]]` right above it (as transformers'
`utils/check_copies.py` checks its models). These tests check that every marked copy still equals its source after the
named replacements, so that a fix in the source that is not carried to a copy fails here.
"""

import ast
import re
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[1] / "hf_tsprune" / "models"
MODEL_FILES = sorted(path for path in MODELS.glob("*.py") if path.name != "__init__.py")
COPIED_FROM = re.compile(
    r"^(?P<indent>\s*)# Copied from hf_tsprune\.models\.(?P<module>\w+)\.(?P<name>[\w.]+)(?: with (?P<with>.+))?$"
)


def definitions(path: Path) -> tuple[list[str], dict[str, ast.AST]]:
    """The lines of a model file and its top-level classes and functions and the classes' methods, by dotted name."""
    lines = path.read_text().splitlines()
    found = {}
    for node in ast.parse("\n".join(lines)).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found[node.name] = node
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, ast.FunctionDef):
                        found[f"{node.name}.{sub.name}"] = sub
    return lines, found


def first_line(node: ast.AST) -> int:
    """The 0-based index of a definition's first line (its first decorator)."""
    return node.lineno - 1 - len(node.decorator_list)


def source(lines: list[str], node: ast.AST) -> str:
    return "\n".join(lines[first_line(node) : node.end_lineno])


def copies(path: Path) -> list[tuple[int, re.Match, ast.AST]]:
    """`(line, marker, definition)` for every `# Copied from` marker of a file, the definition right below it."""
    lines, found = definitions(path)
    by_line = {first_line(node): node for node in found.values()}
    marked = []
    for index, line in enumerate(lines):
        match = COPIED_FROM.match(line)
        if match is None:
            continue
        assert index + 1 in by_line, f"{path.name}:{index + 1}: `# Copied from` is not right above a def or class"
        marked.append((index + 1, match, by_line[index + 1]))
    return marked


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.name)
def test_model_file_imports_no_other_model_file(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import from {node.module!r}"
            assert not (node.module or "").startswith("hf_tsprune"), f"{path.name} imports {node.module}"
        elif isinstance(node, ast.Import):
            assert not any(alias.name.startswith("hf_tsprune") for alias in node.names), path.name


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.name)
def test_copied_from_markers_match_their_source(path):
    for line, match, node in copies(path):
        source_path = MODELS / f"{match['module']}.py"
        assert source_path != path, f"{path.name}:{line}: a copy inside one file"
        source_lines, source_found = definitions(source_path)
        assert match["name"] in source_found, f"{path.name}:{line}: no {match['name']} in {source_path.name}"
        expected = source(source_lines, source_found[match["name"]])
        for pair in (match["with"] or "").split(","):
            if pair.strip():
                old, new = (part.strip() for part in pair.split("->"))
                expected = expected.replace(old, new)
        assert source(definitions(path)[0], node) == expected, (
            f"{path.name}:{line}: the copy of {match['module']}.{match['name']} differs from its source"
        )


def test_the_later_model_files_mark_their_copies():
    """Sundial and Time-MoE were written after Timer-XL and carry copies of its rotary code (at least)."""
    for name in ("sundial.py", "time_moe.py"):
        names = {match["name"] for _, match, _ in copies(MODELS / name)}
        assert {"rotate_half", "apply_rotary"} <= names, (name, names)
