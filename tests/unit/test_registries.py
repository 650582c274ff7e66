"""The dataset and architecture registries: a module dropped into a catalog package is found,
and the config's choices, ``--help``, the loaders and the README all follow the registries."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from app.config import ConfigError, DatasetName, ModelName, _choices, build_parser, merge_config
from app.datasets import (
    Dataset,
    DatasetInfo,
    Download,
    RawArrays,
    dataset_names,
    get_dataset,
    load_splits,
    register_dataset,
    unregister_dataset,
)
from app.models import (
    ModelSpec,
    architecture_names,
    build_model,
    register_architecture,
    unregister_architecture,
)
from app.train.config import TrainConfig

README = Path(__file__).resolve().parents[2] / "README.md"

TINY_DATASET = '''
"""A throwaway dataset: 4x4 squares, dark or light."""
from pathlib import Path

import numpy as np

from app.datasets import Dataset, DatasetInfo, RawArrays, register_dataset


def read(_: Path) -> RawArrays:
    labels = np.arange(40, dtype=np.int64) % 2
    images = np.repeat(labels.astype(np.uint8) * 200, 16).reshape(40, 1, 4, 4)
    return RawArrays(images[:30], labels[:30], images[30:], labels[30:])


register_dataset(
    Dataset(DatasetInfo("tiny_squares", ("dark", "light"), 1, 4, (0.5,), (0.4,), 1, False), read)
)
'''

TINY_MODEL = '''
"""A throwaway architecture family: one linear layer."""
from torch import nn

from app.models import ModelSpec, architecture


@architecture("tiny_linear")
def tiny_linear(spec: ModelSpec) -> nn.Module:
    inputs = spec.in_channels * spec.image_size**2
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, spec.num_classes))
'''


@pytest.fixture
def add_catalog_module(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[[str, str, str], None]]:
    """Write a module into a temporary folder that joins a catalog package's path, as a new file
    in app/datasets/catalog/ or app/models/catalog/ would; everything is undone afterwards."""
    before = set(dataset_names()), set(architecture_names())
    added: list[str] = []

    def add(package_name: str, module: str, source: str) -> None:
        package = importlib.import_module(package_name)
        folder = tmp_path / package_name.replace(".", "_")
        folder.mkdir(exist_ok=True)
        (folder / f"{module}.py").write_text(source)
        monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
        importlib.invalidate_caches()
        added.append(f"{package_name}.{module}")

    yield add
    for name in set(dataset_names()) - before[0]:
        unregister_dataset(name)
    for name in set(architecture_names()) - before[1]:
        unregister_architecture(name)
    for module_name in added:
        sys.modules.pop(module_name, None)


def test_a_dataset_module_added_to_the_catalog_is_discovered(
    add_catalog_module: Callable[[str, str, str], None],
) -> None:
    assert "tiny_squares" not in dataset_names()
    add_catalog_module("app.datasets.catalog", "tiny_squares", TINY_DATASET)
    assert "tiny_squares" in dataset_names()
    # The loaders, the config's validation and choices and --help all see it.
    splits = load_splits("tiny_squares", val_fraction=0.2)
    assert splits.x_train.shape[1:] == (1, 4, 4) and len(splits.x_test) == 10
    assert merge_config(TrainConfig, {"dataset": "tiny_squares"}, env={}).dataset == "tiny_squares"
    assert "tiny_squares" in _choices(DatasetName)
    assert "tiny_squares" in build_parser(TrainConfig, "").format_help()


def test_an_architecture_module_added_to_the_catalog_is_discovered(
    add_catalog_module: Callable[[str, str, str], None],
) -> None:
    assert "tiny_linear" not in architecture_names()
    add_catalog_module("app.models.catalog", "tiny_linear", TINY_MODEL)
    assert "tiny_linear" in architecture_names()
    spec = ModelSpec.for_dataset("tiny_linear", get_dataset("digits").info)
    assert ModelSpec.from_json(spec.to_json()) == spec  # served models follow the registry
    assert build_model(spec)(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert merge_config(TrainConfig, {"model": "tiny_linear"}, env={}).model == "tiny_linear"
    assert "tiny_linear" in _choices(ModelName)
    assert "tiny_linear" in build_parser(TrainConfig, "").format_help()


def test_registering_through_the_api_and_unregistering() -> None:
    def read(_: Path) -> RawArrays:
        raise AssertionError("never read")

    info = DatasetInfo("api_only", ("a", "b"), 1, 4, (0.5,), (0.5,), 0, False)
    register_dataset(Dataset(info, read))
    try:
        assert "api_only" in dataset_names() and "api_only" in _choices(DatasetName)
    finally:
        unregister_dataset("api_only")
    assert "api_only" not in dataset_names()
    with pytest.raises(ConfigError, match="--dataset"):
        merge_config(TrainConfig, {"dataset": "api_only"}, env={})


def test_a_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match="'resnet18' is registered twice"):
        register_architecture("resnet18", lambda spec: torch.nn.Identity())
    with pytest.raises(ValueError, match="identifier"):
        register_architecture("not a name", lambda spec: torch.nn.Identity())
    digits = get_dataset("digits")
    assert register_dataset(digits) is digits  # the same entry again is harmless


def test_unknown_names_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choose from cifar10"):
        get_dataset("imagenet")
    with pytest.raises(ConfigError) as error:
        merge_config(TrainConfig, {"dataset": "imagenet", "model": "vgg"}, env={})
    message = str(error.value)
    assert all(f"'{name}'" in message for name in (*dataset_names(), *architecture_names()))


def test_help_lists_every_registered_choice() -> None:
    help_text = " ".join(build_parser(TrainConfig, "").format_help().split())
    assert f"one of: {', '.join(dataset_names())}" in help_text
    assert f"one of: {', '.join(architecture_names())}" in help_text


# ---------------------------------------------------------------------------------------------
# The README follows the registries


def _files_cell(source: Download | None) -> str:
    if source is None:
        return "none"
    if source.archive:
        return ", ".join(f"`{source.folder}/` (from `{f.filename}`)" for f in source.files)
    names = ", ".join(f"`{f.filename}`" for f in source.files)
    return f"`{source.folder}/`: {names} (each may be unzipped)"


def _dataset_row(name: str) -> str:
    dataset = get_dataset(name)
    info = dataset.info
    image = f"{info.channels}x{info.image_size}x{info.image_size}"
    return (
        f"| `{name}` | {dataset.summary} | {image} | {info.num_classes} "
        f"| {_files_cell(dataset.source)} |"
    )


def _readme_section(heading: str) -> str:
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n#", start + len(heading) + 2)
    return text[start : end if end != -1 else None]


def test_readme_dataset_table_matches_the_registry() -> None:
    rows = [line for line in _readme_section("### Datasets").splitlines() if line.startswith("| `")]
    expected = [_dataset_row(name) for name in dataset_names()]
    assert rows == expected, "README's dataset table should read:\n" + "\n".join(expected)


def test_readme_model_flag_row_lists_every_registered_architecture() -> None:
    """(--dataset's row points at the dataset table, checked above.)"""
    row = next(line for line in README.read_text().splitlines() if line.startswith("| `--model`"))
    meaning = row.split("|")[3]
    assert set(re.findall(r"`([^`]+)`", meaning)) == set(architecture_names())


def test_readme_error_example_is_what_validation_says() -> None:
    with pytest.raises(ConfigError) as error:
        merge_config(TrainConfig, {"epochs": "0", "lr": "-1"}, env={})
    lines = README.read_text().splitlines()
    assert f"error: {error.value}".splitlines()[0] in lines
    assert all(line in lines for line in str(error.value).splitlines()[1:])
