"""Turn a model id and a local path into a ModelSource, and serve a directory of models by name.

A model is a single file (`mlp.onnx`) or a directory holding one model file and, optionally,
`mesh.json`, or a directory of version directories (`fraud/v3/`), served as its newest version
(docs/model-layout.md). The format comes from mesh.json's `format`, else from the
model file's suffix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from mesh.errors import InvalidRequest, ModelNotFound
from mesh.ids import check_id, is_valid_id
from mesh.pod.cache import ModelSource
from mesh.runtimes.base import CONFIG_NAME, ModelConfig
from mesh.runtimes.hf import (
    ADAPTER_CONFIG,
    HF_CONFIG,
    TRANSFORMERS,
    adapter_base,
    is_hf_model_dir,
)
from mesh.runtimes.registry import RuntimeRegistry


def check_model_id(model_id: str) -> None:
    """The mesh's one model-id rule (mesh.ids): a name is never a path."""
    check_id(model_id, "model name")


def source_for(
    model_id: str,
    path: Path,
    runtimes: RuntimeRegistry,
    format: str = "",
    options: Mapping[str, str] | None = None,
    base: str | None = None,
) -> ModelSource:
    """Where `path` (a model file or a directory holding one) keeps its model, and its format.

    `base`: an adapter's base as the mesh registered it, over what the adapter's files say.
    """
    check_model_id(model_id)
    if path.is_dir():
        config = ModelConfig.read(path)
        if config.file is None and not _model_files(path, runtimes):
            version = latest_version(path)
            if version is not None:  # models/fraud/v3/model.ubj: fraud is its newest version
                path, config = version, ModelConfig.read(version)
        hf = _hf_source(model_id, path, config, runtimes, format, options, base)
        if hf is not None:
            return hf
    if base:
        raise InvalidRequest(f"model {model_id!r} is not a LoRA adapter but was given a base")
    if path.is_dir():
        file = _model_file(model_id, path, config, runtimes)
    elif path.is_file():
        config = ModelConfig.read(path.parent) if path.name != CONFIG_NAME else ModelConfig()
        file = path
    else:
        raise ModelNotFound(f"model {model_id!r}: nothing at {path}")
    fmt = format or config.format or runtimes.format_of(file)
    if fmt is None:
        raise InvalidRequest(
            f"model {model_id!r}: cannot tell the format of {file.name}; set format in "
            f"{CONFIG_NAME} (known suffixes: {sorted(runtimes.suffixes())})"
        )
    runtimes.get(fmt)  # refuses a format no runtime here loads
    return ModelSource(model_id, fmt, file, config, dict(options or {}))


_VERSION = re.compile(r"v?(\d+(?:\.\d+)*)", re.IGNORECASE)


def latest_version(directory: Path) -> Path | None:
    """The newest version directory under `directory` (`3`, `v3`, `v1.2`; compared as numbers,
    so v10 is newer than v9), or None when it has none."""
    versions = []
    for child in directory.iterdir():
        match = _VERSION.fullmatch(child.name)
        if match and child.is_dir():
            versions.append((tuple(int(x) for x in match.group(1).split(".")), child))
    return max(versions)[1] if versions else None


def _model_files(directory: Path, runtimes: RuntimeRegistry) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.name != CONFIG_NAME and runtimes.format_of(p) is not None
    )


def _hf_source(
    model_id: str,
    directory: Path,
    config: ModelConfig,
    runtimes: RuntimeRegistry,
    format: str,
    options: Mapping[str, str] | None,
    base_override: str | None = None,
) -> ModelSource | None:
    """A Hugging Face layout (config.json) or a peft adapter (adapter_config.json), if it is one.

    The format is `transformers` unless mesh.json or the caller says otherwise; an adapter's
    base is the caller's, else mesh.json's `base`, else the adapter's `base_model_name_or_path`
    when that is a model id (a hub path such as "org/name" is not: then mesh.json must say).
    """
    fmt = format or config.format
    if fmt not in (None, TRANSFORMERS):
        return None
    adapter = directory / ADAPTER_CONFIG
    hf_config = directory / HF_CONFIG
    if adapter.is_file():
        named = adapter_base(adapter)
        base = base_override or config.base or (named if named and is_valid_id(named) else None)
        if base is None:
            found = f" (it names {named!r}, which is not a model id here)" if named else ""
            raise InvalidRequest(
                f"adapter {model_id!r}: name its base model in {CONFIG_NAME} ('base') or in "
                f"{ADAPTER_CONFIG}'s base_model_name_or_path{found}"
            )
        check_model_id(base)
        if base == model_id:
            raise InvalidRequest(f"adapter {model_id!r} names itself as its base")
        file = adapter
    elif hf_config.is_file() and (fmt == TRANSFORMERS or is_hf_model_dir(hf_config)):
        if base_override:
            raise InvalidRequest(f"model {model_id!r} is not a LoRA adapter but was given a base")
        base = None
        file = hf_config
    else:
        return None
    runtimes.get(TRANSFORMERS)  # refuses it where the llm extra is not installed
    return ModelSource(
        model_id, TRANSFORMERS, file, config, dict(options or {}), directory=True, base=base
    )


def _model_file(
    model_id: str, directory: Path, config: ModelConfig, runtimes: RuntimeRegistry
) -> Path:
    if config.file is not None:
        file = (directory / config.file).resolve()
        if not file.is_relative_to(directory.resolve()) or not file.is_file():
            raise InvalidRequest(
                f"model {model_id!r}: {CONFIG_NAME} names file {config.file!r}, which is not a "
                "file inside the model directory"
            )
        return file
    files = _model_files(directory, runtimes)
    if len(files) != 1:
        found = [p.name for p in files]
        raise InvalidRequest(
            f"model {model_id!r}: expected one model file in {directory.name}/, found {found}; "
            f"name it with 'file' in {CONFIG_NAME}"
        )
    return files[0]


class ModelRepository:
    """Every model under a directory, by name, resolved when first asked for.

    >>> repo = ModelRepository(Path("models"), RuntimeRegistry.discover())
    >>> repo.resolve("mlp").format
    'onnx'
    """

    def __init__(self, root: Path, runtimes: RuntimeRegistry) -> None:
        self.root = root
        self._runtimes = runtimes

    def resolve(self, model_id: str) -> ModelSource:
        check_model_id(model_id)
        directory = self.root / model_id
        if directory.is_dir():
            return source_for(model_id, directory, self._runtimes)
        for file in sorted(self.root.glob(f"{model_id}.*")):
            if file.is_file() and file.stem == model_id and self._runtimes.format_of(file):
                return source_for(model_id, file, self._runtimes)
        raise ModelNotFound(f"model {model_id!r} not found in {self.root}")

    def names(self) -> list[str]:
        names = set()
        for p in self.root.iterdir():
            if p.is_dir() and is_valid_id(p.name):
                names.add(p.name)
            elif (
                p.is_file()
                and self._runtimes.format_of(p)
                and p.name != CONFIG_NAME
                and is_valid_id(p.stem)
            ):
                names.add(p.stem)
        return sorted(names)
