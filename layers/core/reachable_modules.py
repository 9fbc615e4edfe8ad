"""The CoreLayer's modules that no import can reach, for the build to delete (layers/core/Makefile, `unreachable`;
docs/layer.md, "Modules no import reaches"). A build tool: not shipped in the layer.

The closure is static and errs towards keeping. It starts from every module of the gateway's package and the
modules named with --root (what functions/*/app.py import: sam build runs the Makefile on a copy of layers/core,
which cannot see them), and the modules entry points name. A module reaches:
- whatever any import statement anywhere in it names (module level, in a function, under `try` or
  `if TYPE_CHECKING`), with the packages above it (importing `a.b.c` runs `a` and `a.b` first) and, for
  `from a import b`, the submodule `a.b` if there is one;
- every module that a string constant in it names (or a constant part of an f-string), absolutely
  (`"pydantic.deprecated.json"`, `"pydantic.utils:version_info"`), relatively to its package (`".main"`, or
  `"sqs"` in a lazy `__getattr__` map of module names), or as a prefix (`"aws_xray_sdk.ext.%s"`: all of
  `aws_xray_sdk.ext`): the names that lazy imports and `import_module` are given.
A compiled extension (not parsed) reaches every module a dotted name among its bytes names.

A dynamic import (`import_module`, `__import__`, `find_spec`, pydantic's `import_string`...) given a name made at
run time could import anything: each such call in a reached module must be one reviewed in REVIEWED, which says
where its names come from (the string constants above, which the closure follows). A call not reviewed (a new
version of a package, say) makes the build delete nothing, and tests/unit/test_layer_build.py fail, until it is.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

DYNAMIC_IMPORTS = frozenset(
    {"import_module", "__import__", "find_spec", "spec_from_file_location", "load_module", "import_string"}
)
# Each module whose dynamic imports take a name made at run time -> where that name comes from: string constants of
# the reached code (which the closure follows), or something outside the layer's packages (data, a file's path).
REVIEWED = {
    "aws_lambda_powertools.shared.lazy_import": "LazyLoader(name): its callers pass string constants "
    "(tracing/tracer.py: constants.XRAY_SDK_MODULE)",
    "aws_lambda_powertools.utilities.parser": "f'{__name__}.envelopes' in its __getattr__",
    "aws_lambda_powertools.utilities.parser.models": "the names in its _MODEL_MODULES map (and _SUBMODULES, its "
    "values)",
    "aws_lambda_powertools.event_handler.openapi.merge": "spec_from_file_location: the files an OpenAPI merge is "
    "pointed at (an application's handlers), by path",
    "pydantic": "the names in its _dynamic_imports map ('.main', and the keys mapped to '__module__')",
    "pydantic._migration": "the 'module:name' strings of its MOVED_IN_V2, DEPRECATED_MOVED_IN_V2 and "
    "REDIRECT_TO_V1 maps",
    "pydantic._internal._validators": "import_string: the values of an ImportString field (the gateway declares "
    "none: tests/unit/test_layer_build.py) and pydantic._migration's strings",
    "pydantic.v1.types": "PyObject: a field's value (the gateway has no v1 model)",
    "pydantic.v1.utils": "import_string: a PyObject field's value (the gateway has no v1 model)",
    "pydantic.v1.version": "the string constants 'devtools', 'dotenv', 'email-validator', 'typing-extensions'",
    "aws_xray_sdk.core.patcher": "'aws_xray_sdk.ext.%s' for the names in its SUPPORTED_MODULES, and the modules "
    "the caller asks patched (Powertools' Tracer: string constants)",
    "aws_xray_sdk.core.plugins.utils": "'aws_xray_sdk.core.plugins.' and the names in its PLUGIN_MAPPING",
    "aws_xray_sdk.ext.django.db": "the modules of Django's database connections (Django is not in the layer)",
    "anyio._core._eventloop": "f'anyio._backends._{name}': its own backends",
    "anyio._lazyimport": "the targets in the maps of deprecated anyio names its callers pass (string constants)",
    "phonenumbers.data": "'region_%s' (relative: its own region modules)",
    "phonenumbers.shortdata": "'region_%s' (relative: its own region modules)",
    "wrapt.importer": "post-import hooks: the modules their callers name (the X-Ray SDK's patcher)",
    "wrapt.patches": "the module a caller names, to patch it (the X-Ray SDK's patcher)",
    "wrapt.proxies": "lazy_import(name): the module a caller names",
}
_DOTTED = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_PREFIX = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\.)(?:%s|\{)")


def module_files(
    directory: Path, package: str | None = None, suffixes: Iterable[str] = (".py", ".so")
) -> dict[str, Path]:
    """Each module under `directory` (sources and compiled extensions, or what `suffixes` says) by its dotted name;
    with `package`, `directory` is that package's own directory."""
    found: dict[str, Path] = {}
    base = directory.parent if package else directory
    for path in sorted(directory.rglob("*")):
        if path.suffix not in suffixes or "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(base).parts)
        parts[-1] = parts[-1].split(".", 1)[0]
        if parts[-1] == "__init__":
            parts.pop()
        if parts and all(part.isidentifier() for part in parts):
            found[".".join(parts)] = path
    return found


def _resolve(relative: str, package: str) -> str:
    """`.main` or `..x` against `package`, as `from .main import` in one of its modules would."""
    dots = len(relative) - len(relative.lstrip("."))
    parts = package.split(".")[: len(package.split(".")) - dots + 1]
    return ".".join([*parts, relative[dots:]] if relative[dots:] else parts)


def _under(prefix: str, modules: Iterable[str]) -> set[str]:
    return {module for module in modules if module.startswith(prefix)}


def _named_by(text: str, package: str, modules: dict[str, Path]) -> set[str]:
    """The modules a string constant of a module in `package` may name."""
    if prefix := _PREFIX.search(text):
        return _under(prefix.group(1), modules)
    name = text.split(":", 1)[0].strip()
    candidates = {_resolve(name, package)} if name.startswith(".") else {name, f"{package}.{name}"}
    return candidates & modules.keys()


def dynamic_imports(tree: ast.AST) -> list[int]:
    """Lines of the calls of a dynamic import given anything but a string constant."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        called = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        first = node.args[0] if node.args else None
        if called in DYNAMIC_IMPORTS and not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            lines.append(node.lineno)
    return lines


def references(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that module `name` (at `path`) may import."""
    if path.suffix == ".so":
        return {match.decode() for match in _DOTTED.findall(path.read_bytes())} & modules.keys()
    tree = ast.parse(path.read_bytes(), str(path))
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    named: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve("." * node.level + (node.module or ""), package) if node.level else node.module or ""
            named.update([source, *(f"{source}.{alias.name}" for alias in node.names)])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 300:
            named.update(_named_by(node.value, package, modules))
    return named & modules.keys()


def _with_parents(name: str) -> Iterator[str]:
    parts = name.split(".")
    return (".".join(parts[:end]) for end in range(1, len(parts) + 1))


def closure(roots: Iterable[str], modules: dict[str, Path]) -> set[str]:
    """Every module of `modules` that `roots` (names in `modules`) reach."""
    reached: set[str] = set()
    pending = list(roots)
    while pending:
        for module in _with_parents(pending.pop()):
            if module in modules and module not in reached:
                reached.add(module)
                pending.extend(references(module, modules[module], modules))
    return reached


def unreviewed_dynamic_imports(reached: Iterable[str], modules: dict[str, Path]) -> list[str]:
    """`module:line` of each dynamic import in the reached modules that REVIEWED does not account for."""
    found = []
    for name in sorted(reached):
        path = modules[name]
        if path.suffix == ".py" and name not in REVIEWED and not name.startswith("sms_gateway"):
            found += [f"{name}:{line}" for line in dynamic_imports(ast.parse(path.read_bytes(), str(path)))]
    return found


def entry_points(directory: Path) -> list[str]:
    """The modules the installed distributions' entry points name (`pytest11: anyio = anyio.pytest_plugin`): a
    program that loads entry points (pydantic loads its plugins so) may import them."""
    return [
        line.split("=", 1)[1].split(":", 1)[0].split("[", 1)[0].strip()
        for path in sorted(directory.glob("*.dist-info/entry_points.txt"))
        for line in path.read_text().splitlines()
        if "=" in line
    ]


def unreachable(
    directory: Path, trimmed: Iterable[str], gateway: Path, roots: Iterable[str] = ()
) -> tuple[list[Path], list[str]]:
    """The files of the modules of the `trimmed` top-level packages under `directory` that neither the gateway's
    package (its directory, `gateway`), nor `roots`, nor an entry point reach; and the dynamic imports not
    reviewed (with any, no file: everything is kept)."""
    modules = {**module_files(directory), **module_files(gateway, gateway.name)}
    own = [name for name in modules if name.split(".")[0] == gateway.name]
    reached = closure([*own, *roots, *entry_points(directory)], modules)
    unreviewed = unreviewed_dynamic_imports(reached, modules)
    packages = set(trimmed)
    files = [path for name, path in modules.items() if name.split(".")[0] in packages and name not in reached]
    return ([] if unreviewed else sorted(files)), unreviewed


def delete(directory: Path, files: Iterable[Path]) -> None:
    """Deletes the files, then each directory they leave with no file but `py.typed`."""
    parents: set[Path] = set()
    for path in files:
        path.unlink()
        parents.add(path.parent)
    for parent in sorted(parents, key=lambda path: len(path.parts), reverse=True):
        if parent != directory and all(path.is_dir() or path.name == "py.typed" for path in parent.rglob("*")):
            shutil.rmtree(parent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("directory", type=Path, help="the layer's python/ directory, before it is compiled")
    parser.add_argument("packages", nargs="+", help="the top-level packages whose unreachable modules go")
    parser.add_argument("--gateway", type=Path, help="the gateway's package (default: DIRECTORY/sms_gateway)")
    parser.add_argument("--root", action="append", default=[], help="another module the closure starts from")
    parser.add_argument("--delete", action="store_true", help="delete them (without it: list them)")
    arguments = parser.parse_args(argv)
    directory: Path = arguments.directory
    files, unreviewed = unreachable(
        directory, arguments.packages, arguments.gateway or directory / "sms_gateway", arguments.root
    )
    if unreviewed:
        print("unreachable modules: none deleted; dynamic imports not reviewed:", *unreviewed, file=sys.stderr)
    size = sum(path.stat().st_size for path in files)
    if arguments.delete:
        delete(directory, files)
    else:
        print("\n".join(str(path.relative_to(directory)) for path in files))
    print(f"unreachable modules: {len(files)} in {' '.join(arguments.packages)}, {size / 1e6:.2f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
