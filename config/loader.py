"""Reading routing.yaml and pools.yaml into a `Config`, with errors that point at file:line: key.

Every failure — unreadable file, YAML syntax, duplicate key, wrong type, broken rule — surfaces
as one `ConfigError` listing every problem found, so the CLI can print them all and exit 2. Each
file is checked as far as it goes on its own (a YAML syntax error ends that file's checking, not
the other's); rules across both files run once both are valid. Lines come from the YAML node
tree: each key path maps to the line of its key (or of the list item), and a pydantic location is
matched to the nearest path present in the file.
"""
from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from config.models import CONFIG_ERROR, Config, PoolsConfig, RoutingConfig, Strict

ROUTING_FILE = "routing.yaml"
POOLS_FILE = "pools.yaml"

KeyPath = tuple[Any, ...]
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class ConfigError(Exception):
    """Configuration problems, each at `file:line`, under the dotted `key` (`-` when no key applies).

    `problems` holds every problem found, one ConfigError each, and `str()` shows them one per line;
    `file`, `line`, `key` and `message` are the first's, for callers that show one (the admin API's
    400). A problem with a whole file or directory has line 0 and reads `path: message`.
    """

    def __init__(self, file: str, line: int, key: str, message: str) -> None:
        super().__init__(f"{file}: {message}" if line == 0 else f"{file}:{line}: {key}: {message}")
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        self.problems: tuple[ConfigError, ...] = (self,)

    @classmethod
    def joined(cls, errors: Sequence[ConfigError]) -> ConfigError:
        """One error holding the problems of all `errors`, in order."""
        problems = tuple(problem for error in errors for problem in error.problems)
        first = problems[0]
        joined = cls(first.file, first.line, first.key, first.message)
        joined.problems = problems
        joined.args = ("\n".join(str(problem) for problem in problems),)
        return joined


def default_config_dir() -> Path:
    """The package directory, where the shipped routing.yaml and pools.yaml live."""
    return Path(__file__).resolve().parent


def load_config(directory: str | Path) -> Config:
    """Read and validate `directory`/routing.yaml and `directory`/pools.yaml (both required)."""
    directory = Path(directory)
    if not directory.is_dir():
        problem = "not a directory" if directory.exists() else "directory not found"
        raise ConfigError(str(directory), 0, "-", problem)
    routing_path, pools_path = directory / ROUTING_FILE, directory / POOLS_FILE
    config = _load(lambda: _read(routing_path), lambda: _read(pools_path), str(routing_path), str(pools_path))
    return config.model_copy(update={"directory": str(directory)})


def load_config_text(routing_text: str, pools_text: str,
                     routing_name: str = ROUTING_FILE, pools_name: str = POOLS_FILE) -> Config:
    """Validate the two files' contents; the names only label error messages."""
    return _load(lambda: routing_text, lambda: pools_text, routing_name, pools_name)


def _load(read_routing: Callable[[], str], read_pools: Callable[[], str],
          routing_name: str, pools_name: str) -> Config:
    found: list[ConfigError] = []
    routing = _attempt(found, lambda: _checked(read_routing, routing_name, RoutingConfig))
    pools = _attempt(found, lambda: _checked(read_pools, pools_name, PoolsConfig))
    if routing is None or pools is None:
        raise ConfigError.joined(found)
    (routing_document, routing_config), (pools_document, pools_config) = routing, pools
    try:
        return Config(routing=routing_config, pools=pools_config.pools)
    except ValidationError as err:
        # Cross-file rules locate themselves under `routing` or `pools`: route each to its file.
        documents = {"routing": (routing_document, ()), "pools": (pools_document, ("pools",))}

        def locate(loc: KeyPath) -> tuple[_Document, KeyPath]:
            document, prefix = documents[loc[0]]
            return document, prefix + loc[1:]
        raise ConfigError.joined(_problems(err, locate)) from None


def _checked(read: Callable[[], str], name: str, model: type[M]) -> tuple[_Document, M]:
    document = _Document.parse(read(), name)
    return document, document.validate(model)


def _attempt(found: list[ConfigError], step: Callable[[], T]) -> T | None:
    """`step()`, or None with its ConfigError added to `found`: one file's problems do not hide the next's."""
    try:
        return step()
    except ConfigError as err:
        found.append(err)
        return None


def load_yaml_model(path: str | Path, model: type[M]) -> M:
    """Read one YAML file and validate it as `model`; every problem is a ConfigError at file:line: key.

    For files beside the two above (events.yaml) that want the same errors without their own parser.
    """
    path = Path(path)
    return _Document.parse(_read(path), str(path)).validate(model)


def json_schema() -> dict[str, Any]:
    """JSON Schemas (draft 2020-12) keyed by file name: `{"routing.yaml": ..., "pools.yaml": ...}`.

    Two schemas because editors (yaml-language-server's `$schema` comment, VS Code's
    `yaml.schemas`) attach one schema per file; each value is a complete schema on its own.
    """
    return {ROUTING_FILE: file_json_schema(RoutingConfig), POOLS_FILE: file_json_schema(PoolsConfig)}


def file_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON Schema as a document of its own (draft 2020-12), what an editor attaches to one file."""
    return {"$schema": SCHEMA_DIALECT, **model.model_json_schema()}


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), 0, "-", "file not found") from None
    except OSError as err:
        raise ConfigError(str(path), 0, "-", f"cannot read file: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError(str(path), line, "-", "not UTF-8 text") from None


class _Loader(yaml.SafeLoader):
    """SafeLoader whose scalar errors always carry the position of the offending value."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as err:
            # Explicitly tagged values (`!!int x`, `!!bool maybe`, `2024-02-30`) make SafeLoader's
            # scalar constructors raise bare ValueError/KeyError/TypeError without a mark.
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            shown = repr(node.value) if isinstance(node, yaml.ScalarNode) else f"a {node.id}"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown} as {tag}: {err}", node.start_mark) from None


class _DuplicateKey(Exception):
    def __init__(self, path: KeyPath, line: int) -> None:
        super().__init__(path, line)
        self.path = path
        self.line = line


class _Document:
    """One parsed YAML file: its data and the line of every key path in it."""

    def __init__(self, name: str, data: Any, lines: dict[KeyPath, int]) -> None:
        self.name = name
        self.data = data
        self.lines = lines

    @classmethod
    def parse(cls, text: str, name: str) -> _Document:
        try:
            loader = _Loader(text)
        except yaml.reader.ReaderError as err:
            # The reader rejects control characters up front, before any mark exists.
            line = text[:err.position].count("\n") + 1
            message = f"invalid YAML: control character U+{err.character:04X} is not allowed"
            raise ConfigError(name, line, "-", message) from None
        try:
            node = loader.get_single_node()
            if node is None:
                raise ConfigError(name, 1, "-", "file is empty; expected a mapping of keys")
            lines = _key_lines(node, loader)
            data = loader.construct_document(node)
        except _DuplicateKey as err:
            raise ConfigError(name, err.line, _format_key(err.path), "duplicate key") from None
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            line = mark.line + 1 if mark else 1
            where = f" (column {mark.column + 1})" if mark else ""
            raise ConfigError(name, line, "-", f"invalid YAML: {err.problem or err.context}{where}") from None
        except RecursionError:
            raise ConfigError(name, 1, "-", "invalid YAML: nested too deeply") from None
        finally:
            loader.dispose()
        if not isinstance(data, dict):
            raise ConfigError(name, node.start_mark.line + 1, "-",
                              f"expected a mapping of keys at the top level, got {_yaml_type(data)}")
        return cls(name, data, lines)

    def validate(self, model: type[M]) -> M:
        """The data as `model`; the ConfigError raised holds every problem pydantic found."""
        try:
            return model.model_validate(self.data)
        except ValidationError as err:
            raise ConfigError.joined(_problems(err, lambda loc: (self, loc))) from None

    def line_of(self, path: KeyPath) -> int:
        """The line of `path`, or of its nearest ancestor present in the file."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1


def _key_lines(root: yaml.Node, loader: _Loader) -> dict[KeyPath, int]:
    """Line of every key path, raising _DuplicateKey on a repeated key (PyYAML keeps the last silently)."""
    lines: dict[KeyPath, int] = {}
    visited: set[int] = set()
    # Aliases share nodes: visiting each node once keeps recursive anchors finite and
    # "billion laughs" documents linear; paths through an alias resolve to the alias's key.
    stack: list[tuple[KeyPath, yaml.Node, int]] = [((), root, root.start_mark.line + 1)]
    while stack:
        path, node, line = stack.pop()
        lines.setdefault(path, line)
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                # Merge keys (`<<: *defaults`) may be overridden by design; complex keys have no path.
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = loader.construct_object(key_node)
                key_line = key_node.start_mark.line + 1
                try:
                    hash(key)
                except TypeError:
                    continue  # construct_document reports the unhashable key with its mark
                if key in seen:
                    raise _DuplicateKey(path + (key,), key_line)
                seen.add(key)
                stack.append((path + (key,), value_node, key_line))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                stack.append((path + (index,), item, item.start_mark.line + 1))
    return lines


def _problems(err: ValidationError,
              locate: Callable[[KeyPath], tuple[_Document, KeyPath]]) -> list[ConfigError]:
    """A ConfigError for each error in `err`, by line; `locate` maps a location to file and key path.

    A missing key that an unknown key beside it looks like a typo of is left out (`pol:` for
    `pool:`): the unknown key's did-you-mean already names it. On a line shared with a missing
    key (placed at its parent's line), a key the user wrote comes first.
    """
    located = [(detail, *locate(_location(detail))) for detail in err.errors()]
    typos = {(document.name, path[:-1] + (_suggestion(path[-1]),))
             for detail, document, path in located if detail["type"] == "extra_forbidden"}
    found: dict[str, tuple[int, bool, ConfigError]] = {}
    for detail, document, path in located:
        if detail["type"] == "missing" and (document.name, path) in typos:
            continue
        error = ConfigError(document.name, document.line_of(path), _format_key(path), _message(detail))
        found.setdefault(str(error), (error.line, path not in document.lines, error))
    return [error for *_, error in sorted(found.values(), key=lambda item: item[:2])]


def _location(detail: ErrorDetails) -> KeyPath:
    # `[key]` marks an error in a mapping key itself; the key's line is the path's line.
    loc = tuple(part for part in detail["loc"] if part != "[key]")
    if detail["type"] == CONFIG_ERROR:
        loc += tuple(detail.get("ctx", {}).get("at", ()))
    return loc


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _format_key(path: KeyPath) -> str:
    """`pools.web.capacity.max`, `routes[2].pool`; keys that are not plain words are quoted."""
    text = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part if isinstance(part, str) else str(part))}]"
    return text or "-"


# Any key valid somewhere in either file is a fair suggestion for a typo.
_FIELD_NAMES = sorted({name for model in Strict.__subclasses__() for name in model.model_fields})

_TYPE_NAMES = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "list_type": "a list",
}
_BOUNDS = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"),
           "less_than_equal": ("le", "<="), "less_than": ("lt", "<")}


def _message(detail: ErrorDetails) -> str:
    kind, ctx = detail["type"], detail.get("ctx", {})
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]}, got {_yaml_type(detail['input'])}"
    if kind in _BOUNDS:
        name, symbol = _BOUNDS[kind]
        return f"must be {symbol} {_number(ctx[name])}"
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        close = _suggestion(detail["loc"][-1])
        return f"unknown key (did you mean {close!r}?)" if close else "unknown key"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {detail['input']!r}"
    if kind == "too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else detail["msg"]
    if kind == "string_pattern_mismatch":
        return "must start with /" if ctx.get("pattern") == "^/" else f"must match {ctx.get('pattern')}"
    if kind == "value_error":
        return str(ctx["error"])
    if kind == CONFIG_ERROR:
        return detail["msg"]
    return detail["msg"][:1].lower() + detail["msg"][1:]


def _suggestion(key: Any) -> str | None:
    """The known key `key` is most likely a typo of, if any."""
    close = difflib.get_close_matches(str(key), [name for name in _FIELD_NAMES if name != str(key)], n=1)
    return close[0] if close else None


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _yaml_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    return type(value).__name__
