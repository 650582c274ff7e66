"""Validated configuration for every job.

One place merges the four sources a user reaches for, later ones winning:
field defaults < ``--config FILE.yaml`` < ``RAYVISION_<FIELD>`` environment variables < flags.
Flags are the field names in kebab-case. Every invalid value is reported at once, naming the
flag, and the process exits with status 2 before any Ray work starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    TypeAlias,
    TypeVar,
    Union,
    get_args,
    get_origin,
)

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from app.datasets import IMAGE_FOLDER, ImageFolderSource, dataset_names
from app.models import architecture_names

ENV_PREFIX = "RAYVISION_"


class RegistryName:
    """A str field whose choices are a registry's names, read when a value is validated: a
    dataset or architecture registered after import is accepted, and ``--help`` lists it."""

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        raise NotImplementedError

    @classmethod
    def validate(cls, value: str) -> str:
        choices = cls.choices()
        if value not in choices:
            *rest, last = [repr(c) for c in choices] or ["(none registered)"]
            expected = f"{', '.join(rest)} or {last}" if rest else last
            # The message pydantic gives a Literal, so errors read the same for every choice.
            raise PydanticCustomError(
                "literal_error", "Input should be {expected}", {"expected": expected}
            )
        return value

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(cls.validate, core_schema.str_schema())

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "enum": list(cls.choices())}


class DatasetChoice(RegistryName):
    """The name of a registered dataset (``app/datasets/catalog/``), or ``image-folder``."""

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        return (*dataset_names(), IMAGE_FOLDER)


class ModelChoice(RegistryName):
    """The name of a registered architecture (``app/models/catalog/``)."""

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        return architecture_names()


if TYPE_CHECKING:  # a plain str to the type checker; validated against the registry at run time
    DatasetName: TypeAlias = str
    ModelName: TypeAlias = str
else:
    DatasetName = DatasetChoice
    ModelName = ModelChoice

# MLflow registered-model names: letters, digits and - _ . (no slashes, no spaces).
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


class JobConfig(BaseModel):
    """Fields every job shares."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())

    results_json: Path | None = Field(None, description="write a JSON summary of the job here")


# Options several jobs share, declared once.
Experiment = Annotated[str, Field(min_length=1, max_length=256, description="MLflow experiment")]


class DatasetOptions(JobConfig):
    """Where a job finds its dataset's files."""

    data_dir: Path = Field(Path("data"), description="where dataset files are read / downloaded")
    download: bool = Field(True, description="download a missing dataset when online")
    # --dataset image-folder: the user's own images (app/datasets/image_folder.py).
    image_folder: str | None = Field(
        None,
        min_length=1,
        description="with --dataset image-folder: a folder of class subfolders, a local path "
        "or s3://bucket/prefix",
    )
    image_size: int | None = Field(
        None, ge=4, le=512, description="image-folder: side the images are resized to (32)"
    )
    channels: int | None = Field(None, description="image-folder: 1 (grey) or 3 (RGB) (3)")
    test_fraction: float = Field(
        0.2, gt=0, lt=0.9, description="image-folder: stratified share held out for test"
    )

    @field_validator("channels")
    @classmethod
    def _grey_or_rgb(cls, channels: int | None) -> int | None:
        if channels not in (None, 1, 3):
            raise ValueError("Input should be 1 (grey) or 3 (RGB)")
        return channels

    @model_validator(mode="after")
    def _image_folder_options(self) -> DatasetOptions:
        # Jobs whose --dataset may be unset (evaluate: taken from the model) check at load.
        dataset = getattr(self, "dataset", None)
        if dataset == IMAGE_FOLDER and self.image_folder is None:
            raise ValueError(
                "--dataset image-folder needs --image-folder PATH or s3://bucket/prefix"
            )
        if dataset not in (None, IMAGE_FOLDER):
            given = [n for n in ("channels", "image_folder", "image_size") if getattr(self, n)]
            if given:
                flags = ", ".join(flag_name(name) for name in given)
                raise ValueError(f"{flags}: only with --dataset image-folder (got {dataset!r})")
        if self.image_folder is not None:
            uri = self.image_folder
            scheme = uri.split("://", 1)[0] if "://" in uri else ""
            if scheme not in ("", "file", "s3"):
                raise ValueError(f"--image-folder: a local path or s3://bucket/prefix, not {uri!r}")
            if scheme == "s3" and not uri.removeprefix("s3://").split("/", 1)[0]:
                raise ValueError(f"--image-folder: {uri!r} names no bucket (s3://bucket/prefix)")
        return self

    def image_folder_source(
        self, image_size: int | None = None, channels: int | None = None
    ) -> ImageFolderSource | None:
        """The image folder to load, or None; unset size and channels fall back to the given
        ones (a model's, when evaluating it), then to 32 and 3."""
        if self.image_folder is None:
            return None
        return ImageFolderSource(
            self.image_folder,
            self.image_size or image_size or 32,
            self.channels or channels or 3,
            self.test_fraction,
        )


ConfigT = TypeVar("ConfigT", bound=JobConfig)


class ConfigError(ValueError):
    """Invalid configuration; the message names every bad field."""


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        return any(arg is bool for arg in get_args(annotation))
    return False


def _choices(annotation: Any) -> tuple[Any, ...]:
    if isinstance(annotation, type) and issubclass(annotation, RegistryName):
        return annotation.choices()
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(c for arg in get_args(annotation) for c in _choices(arg))
    return ()


def build_parser(config_cls: type[JobConfig], description: str) -> argparse.ArgumentParser:
    """A parser whose flags are the config's fields. Values stay strings: pydantic converts and
    validates them all together, so every bad value is reported at once."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, help="YAML file with any of the fields below")
    for name, field in config_cls.model_fields.items():
        help_text = field.description or ""
        choices = _choices(field.annotation)
        if choices:
            help_text += f"; one of: {', '.join(map(str, choices))}"
        if not field.is_required():
            help_text += f" (default: {field.get_default()})"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flags = [flag_name(name), *extra.get("flags", [])]  # type: ignore[misc]
        if _is_bool(field.annotation):
            parser.add_argument(
                *flags,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                *flags,
                dest=name,
                default=argparse.SUPPRESS,
                metavar=name.upper(),
                help=help_text,
            )
    return parser


def _normalise_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def read_yaml_config(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of field: value")
    return _normalise_keys(loaded)


def env_values(config_cls: type[JobConfig], env: Mapping[str, str]) -> dict[str, Any]:
    return {
        name: env[ENV_PREFIX + name.upper()]
        for name in config_cls.model_fields
        if ENV_PREFIX + name.upper() in env
    }


def format_validation_error(exc: ValidationError) -> str:
    lines = [f"invalid configuration ({exc.error_count()} error(s)):"]
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        where = flag_name(field) if field else "configuration"
        got = f" (got {error['input']!r})" if field and "input" in error else ""
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}{got}")
    return "\n".join(lines)


def merge_config(
    config_cls: type[ConfigT],
    flags: Mapping[str, Any],
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ConfigT:
    """Merge defaults < YAML < env < flags and validate; raise ConfigError naming every bad
    field."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_yaml_config(config_file))
    values.update(env_values(config_cls, os.environ if env is None else env))
    values.update(flags)
    try:
        return config_cls.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc


def parse_config(
    config_cls: type[ConfigT],
    argv: Sequence[str] | None = None,
    description: str = "",
    env: Mapping[str, str] | None = None,
) -> ConfigT:
    """Parse a job's command line; on any invalid value print every error and exit 2."""
    args = vars(build_parser(config_cls, description).parse_args(argv))
    config_file = args.pop("config", None)
    try:
        return merge_config(config_cls, args, config_file, env)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
