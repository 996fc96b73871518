"""``mergehub new``: write a working, tested plugin distribution to start from.

``mergehub new method NAME`` writes ``mergehub-method-NAME/`` (a weighted mean as placeholder maths,
merged in row blocks, its README table generated from its schema); ``mergehub new architecture NAME``
writes ``mergehub-arch-NAME/`` (Llama's layout as placeholder). Both hold a test of their own and
``tests/test_installed.py``, which runs mergehub's plugin test kit on the installed distribution.
The templates are package data: ``mergehub/templates/new/<kind>/*.tmpl``.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from importlib import resources
from pathlib import Path

from mergehub.cli.render import out
from mergehub.common.errors import MergehubError

HELP = "write a new plugin distribution (a method or an architecture) with its tests, ready to install"

NAME = re.compile(r"[a-z][a-z0-9_]*")
#: Template file → path in the new distribution, per kind.
FILES: dict[str, dict[str, str]] = {
    "method": {
        "pyproject.toml.tmpl": "pyproject.toml",
        "README.md.tmpl": "README.md",
        "__init__.py.tmpl": "src/{package}/__init__.py",
        "method.py.tmpl": "src/{package}/method.py",
        "parameters.schema.json.tmpl": "src/{package}/parameters.schema.json",
        "test_method.py.tmpl": "tests/{test}.py",
        "test_installed.py.tmpl": "tests/test_installed.py",
    },
    "architecture": {
        "pyproject.toml.tmpl": "pyproject.toml",
        "README.md.tmpl": "README.md",
        "__init__.py.tmpl": "src/{package}/__init__.py",
        "definition.json.tmpl": "src/{package}/{name}.json",
        "test_architecture.py.tmpl": "tests/{test}.py",
        "test_installed.py.tmpl": "tests/test_installed.py",
    },
}
PREFIX = {"method": "mergehub-method-", "architecture": "mergehub-arch-"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=sorted(FILES), help="what the plugin provides")
    parser.add_argument("name", metavar="NAME",
                        help="the method's merge_method name, or the architecture definition's name: a lowercase "
                             "identifier such as my_merge")
    parser.add_argument("--dir", default=".", metavar="DIR",
                        help="where to create the distribution's folder (default: the current folder)")


def names(kind: str, name: str) -> dict[str, str]:
    """The names a plugin of ``kind`` called ``name`` is known by, all following from ``name``."""
    if not NAME.fullmatch(name):
        raise MergehubError(f"'{name}' is not a valid {kind} name",
                            hint="use a lowercase identifier: a letter, then letters, digits or _ (e.g. my_merge)")
    prefix = PREFIX[kind]
    camel = "".join(part[:1].upper() + part[1:] for part in name.split("_"))
    test = f"test_{name}" if name != "installed" else f"test_{name}_{kind}"  # test_installed.py is the kit's
    return {"name": name, "dist": prefix + name.replace("_", "-"), "package": prefix.replace("-", "_") + name,
            "arch_class": f"{camel}ForCausalLM", "test": test}


def render(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def scaffold(kind: str, name: str, directory: str | Path = ".") -> Path:
    """Write the distribution; returns its folder. Refuses to touch a folder that exists."""
    values = names(kind, name)
    root = Path(directory) / values["dist"]
    if root.exists():
        raise MergehubError(f"{root} already exists; mergehub new never overwrites",
                            hint="remove it, or choose another place with --dir")
    templates = resources.files("mergehub.cli").joinpath(f"templates/{kind}")
    texts = {target.format(**values): render(templates.joinpath(source).read_text("utf-8"), values)
             for source, target in FILES[kind].items()}
    if kind == "method":
        schema = texts[f"src/{values['package']}/parameters.schema.json"]
        texts["README.md"] = render(texts["README.md"], {"table": readme_table(schema)})
    root.parent.mkdir(parents=True, exist_ok=True)
    root.mkdir()
    for path, text in texts.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    (root / "src" / values["package"] / "py.typed").touch()
    return root


def readme_table(schema_text: str) -> str:
    """The parameter table of the new method's README, from its schema (what the plugin test kit expects)."""
    from mergehub.plugin.specs import MethodSpec
    from mergehub.testkit.contract import parameter_table

    json.loads(schema_text)  # a template that is not JSON fails here, not in the user's hands
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "parameters.schema.json"
        path.write_text(schema_text, encoding="utf-8")
        return parameter_table(MethodSpec.from_schema_file(path, "unused:merge"))


def run(args: argparse.Namespace) -> int:
    root = scaffold(args.kind, args.name, args.dir)
    lines = [f"wrote {root}/", *(f"  {p.relative_to(root)}" for p in sorted(root.rglob("*")) if p.is_file()),
             f"next: pip install -e {root} && pytest {root}"]
    for line in lines:
        out.print(line, soft_wrap=True, markup=False, highlight=False)
    return 0
