"""Reading a configuration document: YAML, secret references, the application's schema.

Every problem names the line it is on, so a person can fix the document without
guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import jsonschema
import yaml

ENV_REFERENCE = re.compile(r"^\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}$")
VAULT_REFERENCE = re.compile(r"^vault:([A-Za-z0-9_./-]+)#([A-Za-z0-9_.-]+)$")
# A key whose last words say it holds a secret (SOP 7.2): db_password, api_token, ...
SECRET_KEY = re.compile(
    r"(^|[_\-.])(password|passwd|pwd|secret|token|key|apikey|credentials?|private_key)s?$",
    re.IGNORECASE)


def is_reference(value) -> bool:
    return isinstance(value, str) and bool(ENV_REFERENCE.match(value) or
                                           VAULT_REFERENCE.match(value))


def looks_secret(key: str) -> bool:
    return bool(SECRET_KEY.search(str(key)))


@dataclass(frozen=True)
class Problem:
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "document"
        return f"{where}: {self.path + ': ' if self.path else ''}{self.message}"


@dataclass
class Parsed:
    data: dict
    references: list[str]
    problems: list[Problem]
    # (line, key path, reference) of every reference, for refusals that name the line.
    located: list[tuple[int | None, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _path_text(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _lines(node, path=(), out=None) -> dict[tuple, int]:
    """{path: line number} for every key and item of a composed YAML node tree."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, key_node.value)
            out[child] = key_node.start_mark.line + 1
            _lines(value_node, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            out[child] = item.start_mark.line + 1
            _lines(item, child, out)
    return out


def _line_of(lines: dict[tuple, int], path: tuple) -> int | None:
    path = tuple(path)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return 1 if lines else None


# Deeper documents are refused before they are built: the YAML composer, the walks
# below and the schema check all recurse, and a configuration has no need of it.
MAX_DEPTH = 32


def _nesting_past(document: str, limit: int) -> int | None:
    """The line where ``document`` first nests mappings and lists deeper than
    ``limit``, or None. Reads YAML's event stream, which does not recurse."""
    depth = 0
    for event in yaml.parse(document, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > limit:
                return event.start_mark.line + 1
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def parse(document: str, schema: dict | None = None) -> Parsed:
    """Parse and check a document: YAML syntax, literal secrets, references, schema."""
    if not document.strip():
        return Parsed({}, [], [Problem(1, "", "the document is empty")])
    try:
        too_deep = _nesting_past(document, MAX_DEPTH)
        if too_deep is not None:
            return Parsed({}, [], [Problem(too_deep, "", f"the document nests mappings and "
                                                       f"lists more than {MAX_DEPTH} deep")])
        data = yaml.safe_load(document)
        lines = _lines(yaml.compose(document))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = f", column {mark.column + 1}" if mark else ""
        return Parsed({}, [], [Problem(line, "", f"not valid YAML{column}: {exc.problem}")])
    except yaml.YAMLError as exc:
        return Parsed({}, [], [Problem(None, "", f"not valid YAML: {exc}")])
    if not isinstance(data, dict):
        return Parsed({}, [], [Problem(1, "", "the document must be a mapping of keys to values")])

    problems: list[Problem] = []
    references: list[str] = []
    located: list[tuple[int | None, str, str]] = []

    def walk(value, path: tuple, secret: bool) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if not isinstance(key, str):
                    problems.append(Problem(_line_of(lines, (*path, key)), _path_text(path),
                                            f"key {key!r} must be text"))
                    continue
                walk(inner, (*path, key), secret or looks_secret(key))
        elif isinstance(value, list):
            for index, inner in enumerate(value):
                walk(inner, (*path, index), secret)
        elif is_reference(value):
            references.append(value)
            located.append((_line_of(lines, path), _path_text(path), value))
        elif isinstance(value, str) and ("${" in value or value.startswith("vault:")):
            problems.append(Problem(
                _line_of(lines, path), _path_text(path),
                "this looks like a secret reference but is not one: write ${env:NAME} or "
                "vault:path/to/secret#key"))
        elif secret and value not in (None, "") and not isinstance(value, bool):
            problems.append(Problem(
                _line_of(lines, path), _path_text(path),
                "a literal value under a secret-looking key is refused: secrets are never "
                "stored (SOP 7.2); write a reference such as ${env:NAME} or "
                "vault:path/to/secret#key"))

    walk(data, (), False)
    if schema:
        try:
            validator_cls = jsonschema.validators.validator_for(schema)
            validator_cls.check_schema(schema)
            validator = validator_cls(schema)
        except jsonschema.SchemaError as exc:
            problems.append(Problem(None, "", f"the application's schema is invalid: "
                                              f"{exc.message}"))
        else:
            for error in sorted(validator.iter_errors(data), key=lambda e: list(e.path)):
                path = tuple(error.path)
                problems.append(Problem(_line_of(lines, path), _path_text(path),
                                        error.message))
    problems.sort(key=lambda p: (p.line or 0, p.path))
    return Parsed(data, sorted(set(references)), problems, located)
