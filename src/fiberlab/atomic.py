"""Write files so a reader never sees half of one: to ``<name>.tmp``, then an atomic rename."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON; an unchanged file is left alone (and keeps its mtime)."""
    text = json.dumps(data, indent=2) + "\n"
    if path.is_file() and path.read_text(errors="replace") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
