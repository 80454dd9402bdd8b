"""Write files so a reader never sees half of one: to ``<name>.tmp``, then an atomic rename."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON; an unchanged file is left alone (and keeps its mtime)."""
    path = Path(path)
    text = json.dumps(data, indent=2) + "\n"
    if path.is_file() and path.read_text(errors="replace") == text:
        return
    write_text_atomic(path, text)


def save_figure_atomic(fig: Any, path: Path, close: bool = True) -> Path:
    """``fig.savefig`` through a temporary name (matplotlib picks the format from the suffix);
    closes the figure unless ``close=False`` (to save it again in another format)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        if close:
            plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
