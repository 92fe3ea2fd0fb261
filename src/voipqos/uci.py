"""A reader for OpenWrt's UCI file format that reads a file the way libuci does, so what
voipqos runs with is what `uci show` and LuCI show.

A port of libuci's file.c parser in strict mode (the mode `uci`, rpcd and LuCI use),
byte for byte: quoting (`'...'` literal, `"..."` with backslash escapes, both may span
lines), backslash-newline continuation, `#` comments, `;` between commands, abbreviated
commands (`c`, `o`, `l`, `p`), names of letters, digits and `_` only. Same-named sections
are merged (later options override, `list` after `option` turns it into a list, an
empty `option` value changes nothing); a same-named section of another type is refused.
Verified against the real `uci` CLI: tests/data/uci/ holds its answers.

Linear time: runs of plain bytes are taken with one regex match or `bytes.find`, so a
1 MB value costs one pass (shlex was quadratic). Values must be UTF-8 (libuci does not
care; we hand strings to Python), comments need not be. Errors name file and line.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

_PLAIN = re.compile(rb"[^\s'\"\\#;]+")  # bytes parse_str copies one by one
_DQ_PLAIN = re.compile(rb'[^"\\]+')  # bytes a double-quoted string copies one by one
_BLANKS = re.compile(rb"[ \t]*")  # what strtok(" \t") skips before the command word
_WORD_END = re.compile(rb"[ \t]")
_SPACE = b" \t\n\v\f\r"  # C isspace() in the C locale
_SPACES = re.compile(rb"[ \t\n\v\f\r]*")
MAX_FILE = 64 * 1024  # the shipped config has 2.5 KiB; bounds a reload to ~40 ms here
_COMMANDS = {b"c": "config", b"config": "config", b"o": "option", b"option": "option",
             b"l": "list", b"list": "list", b"p": "package", b"package": "package"}


class UciSyntaxError(ValueError):
    """The file is not valid UCI; the message names file and line."""


@dataclass
class Section:
    type: str
    name: str
    options: dict[str, str | list[str]] = field(default_factory=dict)


_NAME = re.compile(rb"[A-Za-z0-9_]+")
_PACKAGE = re.compile(rb"[A-Za-z0-9_-]+")
_TYPE = re.compile(rb"[!-~]+")  # printable ASCII but space


class _Parser:
    """libuci's parse context over the whole file: `filled` is where the lines read so
    far end, `end` where the buffer's text ends (libuci writes NULs into it), `pos`
    the read position."""

    def __init__(self, data: bytes, source: str) -> None:
        self.buf = data
        self.source = source
        self.pos = 0
        self.end = 0
        self.filled = 0
        self.sections: dict[str, Section] = {}
        self.counts: dict[str, int] = {}
        self.section: Section | None = None

    # -- reading lines -------------------------------------------------------------------

    def _next_line_end(self, start: int) -> int:
        nl = self.buf.find(b"\n", start)
        return len(self.buf) if nl < 0 else nl + 1

    def _getln(self) -> None:
        """uci_getln: the next physical line joins the buffer (it is empty at EOF)."""
        self.end = self.filled = self._next_line_end(self.filled)

    def _cur(self) -> int:
        return self.buf[self.pos] if self.pos < self.end else 0

    def error(self, reason: str) -> UciSyntaxError:
        line = self.buf.count(b"\n", 0, max(0, self.filled - 1)) + 1
        return UciSyntaxError(f"{self.source}:{line}: {reason}")

    # -- words ---------------------------------------------------------------------------

    def _skip_whitespace(self) -> None:
        self.pos = max(self.pos, _SPACES.match(self.buf, self.pos, self.end).end())

    def _backslash(self) -> bool:
        """parse_backslash: True if the next byte is taken literally; False for a
        backslash ending the line, which joins the next line in its place."""
        self.pos += 1
        buf, pos = self.buf, self.pos
        if pos >= self.end or buf[pos] == 0x0A or (
                buf[pos] == 0x0D and pos + 2 == self.end and buf[pos + 1] == 0x0A):
            # libuci reads the next line over the newline: skip to that line
            self.pos = self.filled
            self._getln()
            return False
        return True

    def _single_quote(self, out: list[bytes]) -> None:
        close = self.buf.find(b"'", self.pos + 1)
        if close < 0:
            self.filled = len(self.buf)
            raise self.error("EOF with unterminated '")
        out.append(self.buf[self.pos + 1:close])
        self.pos = close + 1
        if close >= self.end:  # a multi-line value: the lines up to the quote joined
            self.end = self.filled = self._next_line_end(close)

    def _double_quote(self, out: list[bytes]) -> None:
        self.pos += 1
        while True:
            if self.pos >= self.end:  # a multi-line value: the next line joins
                self._getln()
                if self.pos >= self.end:
                    raise self.error('EOF with unterminated "')
            m = _DQ_PLAIN.match(self.buf, self.pos, self.end)
            if m:
                out.append(m.group())
                self.pos = m.end()
                continue
            if self.buf[self.pos] == 0x22:  # the closing quote
                self.pos += 1
                return
            if self._backslash() and self.pos < self.end:
                out.append(self.buf[self.pos:self.pos + 1])
                self.pos += 1

    def _parse_str(self) -> bytes:
        """parse_str: one argument, its quoted and unquoted pieces joined; a `;` is
        left for the next call to end the command."""
        out: list[bytes] = []
        start = self.pos
        go_on = True
        while True:
            c = self._cur()
            if c == 0x27:
                self._single_quote(out)
            elif c == 0x22:
                self._double_quote(out)
            elif c == 0x23:  # '#': the rest of the line is a comment
                self.end = self.pos
                break
            elif c == 0:
                break
            elif c == 0x3B:  # ';'
                go_on = False
                break
            elif c == 0x5C and not self._backslash():
                pass
            else:
                m = _PLAIN.match(self.buf, self.pos, self.end)
                if m:
                    out.append(m.group())
                    self.pos = m.end()
                else:  # an escaped byte
                    out.append(self.buf[self.pos:self.pos + 1])
                    self.pos += 1
            c = self._cur()
            if c == 0 or c in _SPACE:
                break
        word = b"".join(out)
        if self._cur() and go_on:
            self.pos += 1
        elif self.pos - start == len(word):
            # libuci ends the word with a NUL where it copied it to: in place when
            # nothing was unquoted, so a `;` right after it ends the line
            self.end = self.pos
        return word

    def _next_arg(self, required: bool, name: bool = False, package: bool = False) -> bytes:
        self._skip_whitespace()
        if self._cur() == 0x3B:
            self.pos += 1
            word = b""
        else:
            word = self._parse_str()
        if not word:
            if required:
                raise self.error("insufficient arguments")
            return word
        if name and not (_PACKAGE if package else _NAME).fullmatch(word):
            raise self.error("invalid character in name field")
        return word

    def _assert_eol(self) -> None:
        self._skip_whitespace()
        if self._next_arg(False):
            raise self.error("too many arguments")

    def _text(self, word: bytes) -> str:
        try:
            return word.decode()
        except UnicodeDecodeError as exc:
            raise self.error(f"not UTF-8 text (byte 0x{word[exc.start]:02x})") from None

    # -- commands ------------------------------------------------------------------------

    def parse(self) -> list[Section]:
        nul = self.buf.find(b"\0")
        if nul >= 0:  # libuci's fgets/strlen would silently cut the line there
            self.filled = self._next_line_end(nul)
            raise self.error("NUL byte")
        while self.filled < len(self.buf):
            self.pos = self.filled
            self._getln()
            self._line()
        return list(self.sections.values())

    def _line(self) -> None:
        """uci_parse_line: commands up to the end of the line buffer, split by ';'."""
        self._skip_whitespace()
        while True:
            w0 = _BLANKS.match(self.buf, self.pos, self.end).end()
            if w0 >= self.end:
                return
            m = _WORD_END.search(self.buf, w0, self.end)
            w1 = m.start() if m else self.end
            word = self.buf[w0:w1]
            if word[0] == 0x23:
                return
            command = _COMMANDS.get(word)
            if command is None:
                raise self.error("invalid command")
            self.pos = w1 + 1  # past strtok's NUL: a word at the very end has no args
            if self.pos > self.end:
                raise self.error(f"{command} without name")
            getattr(self, "_" + command)()

    def _package(self) -> None:
        self._next_arg(True, True, True)
        self._assert_eol()

    def _config(self) -> None:
        stype = self._next_arg(True)
        if not _TYPE.fullmatch(stype):
            raise self.error("invalid character in type field")
        name = self._next_arg(False, True)
        self._assert_eol()
        type_ = stype.decode()
        key = name.decode() if name else f"\0{len(self.sections)}"
        sec = self.sections.get(key)
        if sec is None:
            index = self.counts.get(type_, 0)
            self.counts[type_] = index + 1
            sec = self.sections[key] = Section(type_, key if name else f"@{type_}[{index}]")
        elif sec.type != type_:
            raise self.error("section of different type overwrites prior section with "
                             "same name")
        self.section = sec

    def _option(self, is_list: bool = False) -> None:
        if self.section is None:
            raise self.error("option/list command found before the first section")
        name = self._next_arg(True, True).decode()
        value = self._text(self._next_arg(False))
        self._assert_eol()
        opts = self.section.options
        current = opts.get(name)
        if is_list:
            if current is None:
                opts[name] = [value]
            elif isinstance(current, list):
                current.append(value)
            else:
                opts[name] = [current, value]
        elif value:  # libuci: an empty value on load changes nothing
            opts[name] = value

    def _list(self) -> None:
        self._option(is_list=True)


def parse_uci(data: bytes | str, source: str = "<config>") -> list[Section]:
    """Parse UCI into sections in file order (same-named ones merged; anonymous ones get
    `@type[i]` names, i counting all sections of that type as `uci show` does)."""
    if isinstance(data, str):
        data = data.encode()
    return _Parser(data, source).parse()


def read_uci(path: str | Path, limit: int = MAX_FILE) -> list[Section]:
    """Read and parse a UCI file. Only a regular file is read (a FIFO would block the
    daemon), at most `limit` bytes; every failure is a UciSyntaxError of one line."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UciSyntaxError(f"{path}: cannot read config: not a regular file")
            data = f.read(limit + 1)
    except OSError as exc:
        raise UciSyntaxError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise UciSyntaxError(f"{path}: cannot read config: larger than {limit} bytes")
    return parse_uci(data, str(path))


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
