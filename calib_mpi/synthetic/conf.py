"""Files beside the synthetic run sets: config files (``key = value`` lines that
``calib-mpi`` reads) and flat truth files."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import h5py


def config_value(value: object) -> str:
    """One config value: paths absolute, sequences space-separated (nested ones flattened)."""
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, (list, tuple)):
        return " ".join(config_value(v) for v in value)
    return str(value)


def write_config_file(path: Path | str, title: str, settings: dict, extra: dict) -> Path:
    """Write ``# calib-mpi config for a synthetic <title>``, one line per setting (None: left
    out), then the ``extra`` settings; returns the path."""
    lines = [f"# calib-mpi config for a synthetic {title}"]
    lines += [f"{k} = {config_value(v)}" for k, v in settings.items() if v is not None]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_truth(path: Path, params: object, datasets: dict, attrs: dict | None = None) -> Path:
    """Write a truth file: the generator's parameters (dataclass, as JSON in attribute
    ``params``), ``attrs`` and one dataset per ``datasets`` item; returns the path."""
    with h5py.File(path, "w") as tf:
        tf.attrs["params"] = json.dumps(asdict(params), default=str)
        for k, v in (attrs or {}).items():
            tf.attrs[k] = v
        for k, v in datasets.items():
            tf.create_dataset(k, data=v)
    return path
