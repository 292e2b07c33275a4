"""Turning what arrives as a note into plain text the de-identifier can scan, or a clear refusal.

* Bytes: UTF-8 (with or without BOM), UTF-16 with a BOM, else Windows-1252 (what legacy Windows
  systems write); bytes that are none of these, or hold NUL/control bytes (a binary file), are refused
  with the offset of the first bad byte.
* RTF (``{\\rtf``) and HTML (``<html``, ``<body``, ``<p>``...) wrappers are reduced to their text:
  control words, font/colour tables, pictures, scripts and styles are dropped, so no PHI hides in markup
  that the recognizers cannot read, and the output is plain text.

A note that cannot be read raises InvalidNoteError: the caller quarantines it with the reason and goes on;
nothing is ever written out without having been scanned.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from radplan.errors import InvalidNoteError

# Characters no text note holds; their presence means a binary file or a broken export.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_HTML_START = re.compile(r"^\s*(?:<!doctype html|<html\b|<body\b|<(?:p|div|table|br|span|h[1-6])\b)", re.IGNORECASE)
# RTF groups whose content is not document text.
_RTF_SKIPPED_GROUPS = {"fonttbl", "colortbl", "stylesheet", "info", "pict", "header", "footer", "listtable",
                       "listoverridetable", "rsidtbl", "generator", "xmlnstbl", "themedata", "datastore", "latentstyles",
                       "object", "fldinst", "filetbl", "revtbl"}
_RTF_TOKEN = re.compile(r"\\([a-z]{1,32})(-?\d{1,10})? ?|\\'([0-9a-f]{2})|\\(.)|([{}])|([^\\{}\r\n]+)|[\r\n]+", re.IGNORECASE)


def decode_note(raw: bytes) -> str:
    """The text of a note file's bytes (see the module docstring), or InvalidNoteError with the reason."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = raw.decode("utf-16")
        except UnicodeDecodeError as error:
            raise InvalidNoteError(f"UTF-16 BOM but invalid UTF-16 at byte {error.start}") from None
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            try:
                text = raw.decode("cp1252")
            except UnicodeDecodeError:
                raise InvalidNoteError(
                    f"neither UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start}) nor Windows-1252"
                ) from None
    check_text(text)
    return text


def check_text(text: str) -> None:
    control = _CONTROL.search(text)
    if control:
        raise InvalidNoteError(f"control character U+{ord(control.group()):04X} at offset {control.start()}: binary content, not a note")


def is_rtf(text: str) -> bool:
    return text.lstrip().startswith("{\\rtf")


def is_html(text: str) -> bool:
    return _HTML_START.match(text) is not None


def rtf_to_text(rtf: str) -> str:
    """Document text of an RTF file: paragraphs and line breaks kept, markup and embedded objects dropped."""
    out: list[str] = []
    stack: list[bool] = []  # per open group: is its content skipped?
    skipping = False
    skip_chars = 0  # characters after \uN that stand in for it
    pending_group = False  # right after "{": the first control word may name a skipped destination
    for m in _RTF_TOKEN.finditer(rtf):
        word, arg, hex_byte, symbol, brace, chunk = m.groups()
        if brace == "{":
            stack.append(skipping)
            pending_group = True
            continue
        if brace == "}":
            skipping = stack.pop() if stack else False
            pending_group = False
            continue
        first_in_group, pending_group = pending_group, False
        if symbol == "*" and first_in_group:
            skipping = True  # {\* ...}: an optional destination, never text
            continue
        if word is not None:
            lowered = word.lower()
            if first_in_group and lowered in _RTF_SKIPPED_GROUPS:
                skipping = True
            elif skipping:
                continue
            elif lowered in ("par", "line", "sect", "page", "row"):
                out.append("\n")
            elif lowered == "tab" or lowered == "cell":
                out.append("\t")
            elif lowered == "u" and arg is not None:
                out.append(chr(int(arg) % 65536))
                skip_chars = 1
            continue
        if skipping:
            continue
        if hex_byte is not None:
            if skip_chars:
                skip_chars -= 1
                continue
            out.append(bytes([int(hex_byte, 16)]).decode("cp1252", errors="replace"))
        elif symbol is not None:
            out.append({"~": "\u00a0", "_": "-", "-": ""}.get(symbol, symbol))
        elif chunk is not None:
            if skip_chars:
                chunk, skip_chars = chunk[1:], 0
            out.append(chunk)
    return "".join(out).strip("\n") + "\n"


class _HtmlText(HTMLParser):
    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "section", "article", "pre", "dt", "dd"}
    HIDDEN = {"script", "style", "head", "title", "template", "noscript"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append("\t")

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    text = re.sub(r"[ \t]*\n[ \t]*(?:\n[ \t]*)+", "\n\n", "".join(parser.parts))
    return text.strip() + "\n"


def plain_text(text: str) -> tuple[str, str]:
    """(plain text, source format: "plain", "rtf" or "html")."""
    check_text(text)
    if is_rtf(text):
        return rtf_to_text(text), "rtf"
    if is_html(text):
        return html_to_text(text), "html"
    return text, "plain"
