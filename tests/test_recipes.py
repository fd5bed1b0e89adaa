"""The configs users copy: recipes, README blocks, the example, the schema.

Every recipe in examples/recipes/ and every JSON config shown in README.md
loads (programs and folders aside: they are on the reader's machine, not
this one) and fits the JSON Schema that editors use; each recipe file is
the one the README shows. The schema, in turn, refuses the mistakes it can
express, so an editor flags them while the user types.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from support import ROOT
from test_config import MISTAKES

from rph.config import load_config

RECIPES = sorted((ROOT / "examples" / "recipes").glob("*.json"))
README = ROOT / "README.md"
SCHEMA = ROOT / "rph" / "config_schema.json"

# A fenced block of README.md marked as JSON, and what marks it as config.
JSON_BLOCK = re.compile(r"^```json\n(.*?)^```", re.MULTILINE | re.DOTALL)
ENTRY_TYPE = re.compile(r'"type"\s*:\s*"(?:ondemand|pausable)"')

# What the design asks the README to show, one recipe each at least.
RECIPES_WANTED = 6

# Mistakes only the loader can see: they span entries, look at the disk or
# at what RE2 and a shell make of a string, or need arithmetic.
LOADER_ONLY = {
    "conflict with nobody",
    "conflict misspelt",
    "conflict with a pausable",
    "conflict with itself",
    "passive path outside the path",
    "same name twice",
    "two default apps",
    "invalid regex",
    "endpoint port too big",
    "endpoint is a listener",
    "endpoint is a wildcard listener",
    "hosts differ",
    "workdir missing",
    "program missing",
    "empty program",
    "unclosed quote",
}


def readme_config_blocks() -> list[str]:
    """The README's JSON blocks that show config entries.

    Other JSON blocks (a status answer with parts left out, editor settings)
    are examples of something else and need not even parse.
    """
    blocks = JSON_BLOCK.findall(README.read_text(encoding="utf-8"))
    return [block for block in blocks if ENTRY_TYPE.search(block)]


def readme_configs() -> list[Any]:
    """The README's config blocks that are whole configs (arrays of entries)."""
    documents = [orjson.loads(block) for block in readme_config_blocks()]
    return [document for document in documents if isinstance(document, list)]


def readme_entries() -> list[Any]:
    """The README's config blocks that show one entry alone."""
    documents = [orjson.loads(block) for block in readme_config_blocks()]
    return [document for document in documents if isinstance(document, dict)]


def validator() -> jsonschema.Draft202012Validator:
    schema = orjson.loads(SCHEMA.read_bytes())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_problems(document: Any) -> list[str]:
    return [error.message for error in validator().iter_errors(document)]


def test_there_is_a_recipe_for_each_use() -> None:
    assert len(RECIPES) >= RECIPES_WANTED
    assert len(readme_configs()) >= RECIPES_WANTED


@pytest.mark.parametrize("path", RECIPES, ids=[path.name for path in RECIPES])
def test_recipe_loads_and_fits_the_schema(path: Path) -> None:
    config = load_config(path, check_programs=False)
    assert config.apps or config.pausables
    assert schema_problems(orjson.loads(path.read_bytes())) == []


@pytest.mark.parametrize("path", RECIPES, ids=[path.name for path in RECIPES])
def test_recipe_is_the_one_the_readme_shows(path: Path) -> None:
    assert orjson.loads(path.read_bytes()) in readme_configs(), (
        f"README.md shows no JSON block equal to {path.name}"
    )


def test_every_config_block_of_the_readme_is_json() -> None:
    blocks = readme_config_blocks()
    assert blocks
    for block in blocks:
        orjson.loads(block)


def test_every_config_of_the_readme_loads_and_fits_the_schema(
    tmp_path: Path,
) -> None:
    # An entry shown alone is checked as a config of that one entry.
    documents = readme_configs() + [[entry] for entry in readme_entries()]
    for number, document in enumerate(documents, 1):
        path = tmp_path / f"readme-{number}.json"
        path.write_bytes(orjson.dumps(document))
        load_config(path, check_programs=False)
        assert schema_problems(document) == [], f"README config {document}"


@pytest.mark.parametrize(
    "path",
    [ROOT / "config.example.json", ROOT / "examples" / "demo.json"],
    ids=["config.example.json", "demo.json"],
)
def test_shipped_configs_fit_the_schema(path: Path) -> None:
    load_config(path, check_programs=False)
    assert schema_problems(orjson.loads(path.read_bytes())) == []


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(document, id=name)
        for name, document, _, _ in MISTAKES
        if name not in LOADER_ONLY
    ],
)
def test_the_schema_refuses_a_mistake(document: Any) -> None:
    assert schema_problems(orjson.loads(orjson.dumps(document)))
