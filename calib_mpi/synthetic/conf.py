"""Config files for the synthetic run sets: ``key = value`` lines that ``calib-mpi`` reads."""

from __future__ import annotations

from pathlib import Path


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
