"""A small reader for OpenWrt's UCI file format, so config works off the router too.

Only the syntax `uci` itself accepts in /etc/config files is handled:
`config TYPE ['NAME']`, `option KEY 'VALUE'`, `list KEY 'VALUE'`, comments and
shell-style quoting. Errors name the file and line.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field


class UciSyntaxError(ValueError):
    """The file is not valid UCI; the message names file and line."""


@dataclass
class Section:
    type: str
    name: str
    options: dict[str, str | list[str]] = field(default_factory=dict)


def parse_uci(text: str, source: str = "<config>") -> list[Section]:
    """Parse UCI text into sections in file order (anonymous ones get `@type[i]` names)."""
    sections: list[Section] = []
    counts: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        try:
            words = shlex.split(raw, comments=True, posix=True)
        except ValueError as exc:
            raise UciSyntaxError(f"{source}:{lineno}: {exc}") from None
        if not words:
            continue
        keyword, args = words[0], words[1:]
        if keyword == "package":
            continue
        if keyword == "config":
            if not 1 <= len(args) <= 2:
                raise UciSyntaxError(f"{source}:{lineno}: 'config' takes a type and a name")
            index = counts.get(args[0], 0)
            counts[args[0]] = index + 1
            name = args[1] if len(args) == 2 else f"@{args[0]}[{index}]"
            sections.append(Section(args[0], name))
            continue
        if keyword not in ("option", "list"):
            raise UciSyntaxError(f"{source}:{lineno}: unknown keyword {keyword!r}")
        if not sections:
            raise UciSyntaxError(f"{source}:{lineno}: {keyword!r} before any 'config' line")
        if len(args) != 2:
            raise UciSyntaxError(f"{source}:{lineno}: {keyword!r} takes a name and one value")
        key, value = args
        opts = sections[-1].options
        if keyword == "option":
            opts[key] = value
        else:
            current = opts.get(key)
            opts[key] = [*current, value] if isinstance(current, list) else [value]
    return sections


def quote(value: str) -> str:
    """Quote a value the way `uci export` does."""
    return "'" + value.replace("'", "'\\''") + "'"


def format_uci(sections: list[Section]) -> str:
    """Write sections back in UCI syntax (used for edits of other packages' config, e.g. sqm)."""
    out: list[str] = []
    for sec in sections:
        head = f"config {sec.type}"
        if not sec.name.startswith("@"):
            head += f" {quote(sec.name)}"
        out.append(head)
        for key, value in sec.options.items():
            if isinstance(value, list):
                out.extend(f"\tlist {key} {quote(v)}" for v in value)
            else:
                out.append(f"\toption {key} {quote(value)}")
        out.append("")
    return "\n".join(out)
