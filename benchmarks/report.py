"""One way to record a benchmark's result: JSON, Markdown and PNG side by side, the table printed."""

from __future__ import annotations

import json
from pathlib import Path


def save(out: Path, res: dict, markdown, plot) -> None:
    """``out``.json, .md (``markdown(res)``) and .png (``plot(res, path)``); print the table."""
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    out.with_suffix(".md").write_text(markdown(res))
    plot(res, out.with_suffix(".png"))
    print(markdown(res))
