"""MkDocs hook: a line `<!-- options: NAME -->` in a page becomes the table of NAME's options, read from the code.

NAME is a registered method (`simclr`, `domain-invariant`, ...) or `run` (the run options every method
shares), so the option tables on the site are the CLI's own (`reprlearn train NAME --help`) and
cannot drift from it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

MARKER = re.compile(r"^<!--\s*options:\s*([\w-]+)\s*-->[ \t]*$", re.MULTILINE)  # alone on its line


def on_config(config, **_):
    src = str(Path(config.config_file_path).parent / "src")
    if src not in sys.path:  # the checkout's reprlearn, not an installed one
        sys.path.insert(0, src)
    return config


def options_table(name: str) -> str:
    from reprlearn.config import RunConfig, describe_fields
    from reprlearn.methods.lookup import method_class

    cls = RunConfig if name == "run" else method_class(name).Config
    rows = ["| option | default | accepted | what |", "| --- | --- | --- | --- |"]
    for flag, default, help_text, accepted in describe_fields(cls):
        if name == "run" and flag in ("method", "out", "config", "resume", "options"):
            continue
        if isinstance(default, bool):  # the CLI spells booleans --flag / --no-flag
            default, accepted = ("on" if default else "off"), f"`--{flag}` / `--no-{flag}`"
        else:
            default = f"`{default}`"
        cells = [f"`--{flag}`", str(default), str(accepted), str(help_text)]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) if len(rows) > 2 else "No options of its own."


def on_page_markdown(markdown: str, **_) -> str:
    return MARKER.sub(lambda m: options_table(m.group(1)), markdown)
