"""`fedsim models` and `fedsim datasets`: what can be trained on what, and its size."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedsim.errors import ConfigError
from fedsim.fedmodels.datasets import (
    DatasetInfo,
    dataset_info,
    dataset_names,
    load_dataset,
)
from fedsim.fedmodels.models import (
    ModelSpec,
    build_model,
    count_parameters,
    model_description,
    model_names,
)
from fedsim.fedmodels.text import DEFAULT_MAX_LEN

UNKNOWN = "-"


Facts = tuple[tuple[int, ...] | None, int | None, int | None, str]


def _spec_facts(info: DatasetInfo) -> Facts:
    """(input shape, classes, vocabulary size, note) for sizing models on `info`.

    Embedded datasets load in about a second, so they give exact values; the others
    come from the registry's static table (text vocabularies at their cap).
    """
    if info.embedded:
        bundle = load_dataset(info.name)
        return bundle.input_shape, bundle.num_classes, bundle.vocab_size, ""
    if info.kind == "text":
        note = (f"vocabulary at its cap of {info.max_vocab:,}; the real size comes "
                "from the training texts") if info.max_vocab else ""
        return (DEFAULT_MAX_LEN,), info.num_classes, info.max_vocab, note
    return info.input_shape, info.num_classes, None, ""


def _parameters(spec: ModelSpec | None) -> tuple[str, str]:
    """(parameter count, note) of the model `spec` names, or why it does not fit."""
    if spec is None:
        return UNKNOWN, "depends on your files (shown when a run starts)"
    try:
        return f"{count_parameters(build_model(spec)):,}", ""
    except ConfigError as err:
        reason = str(err).split(";")[0].split(", got")[0]
        return UNKNOWN, f"not for this dataset: {reason}"


def models(
    dataset: Annotated[str, typer.Option(
        help="Size the models for this dataset's input shape and classes "
        "(see `fedsim datasets`).")] = "digits",
) -> None:
    """List the models and their parameter counts for a dataset."""
    info = dataset_info(dataset)
    shape, classes, vocab, note = _spec_facts(info)
    spec = None
    if shape is not None and classes is not None:
        spec = ModelSpec(name="", input_shape=shape, num_classes=classes,
                         vocab_size=vocab)
    table = Table(title=f"Models for dataset '{dataset}' (input "
                  f"{_shape_text(info, shape)}, {classes or UNKNOWN} classes)")
    for column in ("model", "description", "parameters", "note"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    for name in model_names():
        count, why = _parameters(spec and dataclasses.replace(spec, name=name))
        table.add_row(name, model_description(name), count, why or note)
    Console().print(table)


def _shape_text(info: DatasetInfo, shape: tuple[int, ...] | None) -> str:
    if info.kind == "text":
        length = shape[0] if shape else DEFAULT_MAX_LEN
        return f"{length} tokens"
    return "x".join(str(d) for d in shape) if shape else "depends on your files"


def _size(value: int | None) -> str:
    return UNKNOWN if value is None else f"{value:,}"


def _classes_text(info: DatasetInfo) -> str:
    return "from labels" if info.num_classes is None else str(info.num_classes)


def datasets() -> None:
    """List the datasets: sizes, classes, input shape and where each loads from."""
    table = Table(title="Datasets (canonical train/test splits)")
    for column in ("name", "kind", "train", "test", "classes", "input", "source"):
        # at 80 columns the source wraps (folding long hub ids) instead of losing its end
        table.add_column(column, no_wrap=column == "name",
                         overflow="fold" if column == "source" else "ellipsis",
                         justify="right" if column in ("train", "test") else "left")
    for name in dataset_names():
        info = dataset_info(name)
        table.add_row(name, info.kind, _size(info.train_size), _size(info.test_size),
                      _classes_text(info), _shape_text(info, info.input_shape),
                      info.source)
    console = Console()
    console.print(table)
    console.print("Local files (pass --data-dir FOLDER):", style="bold")
    for name in dataset_names():
        info = dataset_info(name)
        if info.local_files:
            console.print(f"  {name}: {info.local_files}", highlight=False)
    console.print("Without --data-dir, a dataset that is not embedded is fetched once "
                  "from the Hugging Face hub and cached ($FEDSIM_CACHE or "
                  "~/.cache/fedsim/datasets).", highlight=False)
