"""Privacy scanner: search everything past de-identification for known PHI strings (canaries).

Formats are decoded, not grepped: DICOM elements (sequences, private tags, file
meta), Parquet values and schema metadata, NIfTI headers, SQLite tables (Dagster's
run/event storage, MLflow's store), JSON (with embedded base64 attachments),
text, gzip and zip members. Matching is case-insensitive on whole canary strings.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import sqlite3
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

# Zones and folders that hold PHI by design; everything else under a data home is scanned.
PHI_ZONES = ("landing", "lake/raw", "lake/quarantine", "truth")
TEXT_SUFFIXES = {".json", ".ndjson", ".csv", ".tsv", ".txt", ".html", ".htm", ".md", ".yaml", ".yml", ".log", ".out", ".err", ".xml", ".jsonl", ".py"}
MIN_CANARY_LENGTH = 4  # shorter strings (sex codes, single initials) would match everywhere


@dataclass(frozen=True)
class Hit:
    path: str
    where: str
    canary: str

    def redacted(self) -> str:
        shown = self.canary[:2] + "…" if len(self.canary) > 2 else "…"
        return f"{self.path} [{self.where}]: canary {shown} ({len(self.canary)} chars)"


def _trie_pattern(words: Iterable[str]) -> str:
    """One regex for many literals, factored by common prefixes (fast enough for thousands of UIDs)."""
    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def render(node: dict) -> str:
        ends = "" in node
        branches = [re.escape(char) + render(child) for char, child in sorted(node.items()) if char != ""]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 and not ends else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if ends else body

    return render(trie)


def public_reference_texts() -> list[str]:
    """Text radplan ships as public reference data (rule titles, guideline and knowledge-base citations).

    A synthetic patient may share a name with a cited author ("Robert C et al. N Engl J Med"); such a
    match inside shipped reference text is not patient data, so it is not counted as a hit.
    """
    import yaml

    package = Path(__file__).resolve().parent
    rules = yaml.safe_load((package / "decision" / "data" / "rules.yaml").read_text())
    kb = yaml.safe_load((package / "genomics" / "data" / "actionable_kb.yaml").read_text())
    texts = [str(rule.get(field, "")) for rule in rules.get("rules", []) for field in ("title", "guideline")]
    texts += [str(entry.get("citation", "")) for entry in kb.get("entries", [])]
    return [t for t in texts if t]


class CanaryMatcher:
    def __init__(self, canaries: Iterable[str], public_texts: Iterable[str] = ()):
        self._public = sorted({t.lower() for t in public_texts if t}, key=len, reverse=True)
        cleaned = sorted({c.strip().lower() for c in canaries if c and len(c.strip()) >= MIN_CANARY_LENGTH})
        self.canaries = cleaned
        # Whole-token matches only, so a short given name does not match inside an ordinary word.
        self._pattern = re.compile(r"(?<![a-z0-9])" + _trie_pattern(cleaned) + r"(?![a-z0-9])") if cleaned else None
        self._exact = set(cleaned)

    def find(self, text: str) -> set[str]:
        if not self._pattern or not text:
            return set()
        found = self._matches(text.lower())
        if found and self._public:
            # Re-check with shipped reference text blanked out: a hit only there is not patient data.
            cleaned = text.lower()
            for public in self._public:
                cleaned = cleaned.replace(public, " ")
            found = self._matches(cleaned)
        return found

    def _matches(self, lowered: str) -> set[str]:
        return {m.group(0) for m in self._pattern.finditer(lowered)} & self._exact


def load_canaries(path: Path) -> list[str]:
    payload = json.loads(Path(path).read_text())
    if isinstance(payload, list):
        return [str(v) for v in payload]
    return [str(v) for v in payload.get("all", [])]


def _strings_from_json(value) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings_from_json(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings_from_json(item)
    elif isinstance(value, str):
        yield value
        if len(value) >= 16 and len(value) % 4 == 0 and re.fullmatch(r"[A-Za-z0-9+/=]+", value):
            try:
                yield base64.b64decode(value, validate=True).decode("utf-8", errors="ignore")
            except (binascii.Error, ValueError):
                pass
    elif value is not None:
        yield str(value)


def _dicom_strings(data: bytes) -> Iterator[tuple[str, str]]:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    datasets = [("meta", ds.file_meta)] if hasattr(ds, "file_meta") else []
    for label, container in datasets + [("dataset", ds)]:
        for element in container.iterall():
            if element.tag == 0x7FE00010:  # pixel data: image, not text
                continue
            value = element.value
            if isinstance(value, bytes):
                text = value.decode("latin-1")
            elif isinstance(value, pydicom.Sequence):
                continue  # items are visited by iterall
            else:
                text = str(value)
            yield f"{label}:{element.tag}", text


def _parquet_strings(data: bytes) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    for key, value in (table.schema.metadata or {}).items():
        yield "schema-metadata", key.decode("utf-8", "ignore") + "=" + value.decode("utf-8", "ignore")
    for name in table.column_names:
        yield "column-name", name
        column = table.column(name)
        for value in column.to_pylist():
            if value is not None:
                yield f"column:{name}", json.dumps(value, default=str) if not isinstance(value, str) else value


def _sqlite_strings(path: Path) -> Iterator[tuple[str, str]]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        yield f"table:{table}", value.decode("utf-8", errors="ignore")
                    elif value is not None:
                        yield f"table:{table}", str(value)
    finally:
        connection.close()


def _nifti_strings(data: bytes) -> Iterator[tuple[str, str]]:
    # Header (348 bytes) plus extensions up to vox_offset; the voxel data is numbers, not text.
    vox_offset = int(float(__import__("struct").unpack_from("<f", data, 108)[0])) if len(data) >= 112 else len(data)
    yield "nifti-header", data[: max(352, min(vox_offset, len(data)))].decode("latin-1")


def _gunzip(data: bytes) -> bytes:
    """Decompress what can be decompressed: a truncated or multi-member stream still yields its text."""
    out, rest = [], data
    while rest:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out.append(inflater.decompress(rest))
        except zlib.error:
            break
        if not inflater.eof:
            break
        rest = inflater.unused_data
    return b"".join(out)


def extract_strings(name: str, data: bytes, path: Path | None = None) -> Iterator[tuple[str, str]]:
    """Decoded text of a file; a file that does not decode as its format is searched as raw bytes."""
    try:
        yield from _decoded_strings(name, data, path)
    except Exception:  # noqa: BLE001 - a corrupt file must still be searched, never skipped
        yield "undecodable-bytes", data.decode("latin-1")


def _decoded_strings(name: str, data: bytes, path: Path | None = None) -> Iterator[tuple[str, str]]:
    lower = name.lower()
    if lower.endswith(".gz") and not lower.endswith(".nii.gz"):
        yield from extract_strings(name[:-3], _gunzip(data))
    elif lower.endswith((".nii.gz", ".nii")):
        yield from _nifti_strings(_gunzip(data) if lower.endswith(".gz") else data)
    elif lower.endswith(".dcm") or (len(data) > 132 and data[128:132] == b"DICM"):
        yield from _dicom_strings(data)
    elif lower.endswith(".parquet"):
        yield from _parquet_strings(data)
    elif data[:16] == b"SQLite format 3\x00" and path is not None:
        yield from _sqlite_strings(path)
    elif zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.namelist():
                yield from ((f"{member}:{w}", t) for w, t in extract_strings(member, archive.read(member)))
    elif Path(lower).suffix in {".json", ".ndjson", ".jsonl"}:
        text = data.decode("utf-8", errors="replace")
        yield "text", text
        for line in text.splitlines() if lower.endswith((".ndjson", ".jsonl")) else [text]:
            try:
                yield from (("json", s) for s in _strings_from_json(json.loads(line)))
            except json.JSONDecodeError:
                continue
    elif Path(lower).suffix in TEXT_SUFFIXES:
        import html

        text = data.decode("utf-8", errors="replace")
        yield "text", text
        yield "text-unescaped", html.unescape(text)
    else:
        yield "bytes", data.decode("latin-1")


def scan_file(path: Path, matcher: CanaryMatcher, *, display_root: Path | None = None) -> list[Hit]:
    shown = str(path.relative_to(display_root)) if display_root else str(path)
    hits = {}
    for where, text in extract_strings(path.name, path.read_bytes(), path):
        for canary in matcher.find(text):
            hits.setdefault((where.split(":")[0], canary), Hit(shown, where, canary))
    return list(hits.values())


def iter_scannable_files(root: Path, *, exclude: Iterable[str] = PHI_ZONES) -> Iterator[Path]:
    excluded = [root / e for e in exclude]
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(path.is_relative_to(e) for e in excluded):
            yield path


def scan_tree(root: Path, canaries: Iterable[str], *, exclude: Iterable[str] = PHI_ZONES,
              progress: Callable[[int], None] | None = None) -> tuple[list[Hit], int]:
    """Scan every file under root except the PHI zones; returns (hits, files scanned).

    ``progress(files scanned so far)`` is called after each file."""
    matcher = CanaryMatcher(canaries, public_reference_texts())
    hits, scanned = [], 0
    for path in iter_scannable_files(root, exclude=exclude):
        hits.extend(scan_file(path, matcher, display_root=root))
        scanned += 1
        if progress is not None:
            progress(scanned)
    return hits, scanned


def _privacy_scan(args) -> int:
    from radplan import progress

    canaries = load_canaries(Path(args.canaries))
    with progress.task("files scanned") as bar:
        hits, scanned = scan_tree(Path(args.root), canaries, exclude=() if args.include_phi_zones else PHI_ZONES,
                                  progress=bar.callback)
    for hit in hits:
        print(hit.redacted())
    print(f"{scanned} files scanned for {len(CanaryMatcher(canaries).canaries)} canaries: {len(hits)} hits")
    return 1 if hits else 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("privacy-scan", help="search everything past de-identification for planted PHI canaries")
    parser.add_argument("root", help="data home or folder to scan (PHI zones landing/, lake/raw, lake/quarantine, truth/ are skipped)")
    parser.add_argument("--canaries", required=True, help="JSON: a list of strings or {'all': [...]} (e.g. truth/phi_canaries.json)")
    parser.add_argument("--include-phi-zones", action="store_true", help="scan the PHI zones too (to check the canaries are planted)")
    parser.set_defaults(func=_privacy_scan)
