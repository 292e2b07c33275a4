"""Encryption at rest for the raw zone: chunked AES-256-GCM (a STREAM-style construction).

File layout (all integers big-endian)::

    magic "RPRAWENC" (8) | version (1) | key id (8) | chunk size (4) | file nonce (12)
    chunk 0 ciphertext + tag (16) | chunk 1 ... | final chunk (possibly empty) + tag

* The 32-byte master key comes from ``RADPLAN_RAW_ZONE_KEY`` (hex or base64); the
  header carries only its key id (a fingerprint), never the key.
* Each file gets a random 96-bit nonce; the file key is HKDF-SHA256(master key,
  salt = file nonce), so nonces never repeat under one key however many files are written.
* Chunk ``i`` is sealed with nonce ``i`` (11 bytes) || final flag (1 byte) and
  associated data header || relative path: chunks cannot be reordered, dropped,
  truncated or extended, and a file moved to another path does not decrypt.
* Encryption and decryption stream one chunk at a time, so memory stays flat.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from radplan.settings import RAW_ZONE_KEY_ENV_VAR, raw_zone_key_text

KEY_ENV_VAR = RAW_ZONE_KEY_ENV_VAR
MAGIC = b"RPRAWENC"
VERSION = 1
HEADER = struct.Struct(">8sB8sI12s")
TAG_BYTES = 16
DEFAULT_CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 64 << 20
FILE_KEY_INFO = b"radplan raw zone file key v1"


class RawZoneCryptoError(Exception):
    """A raw-zone file cannot be decrypted: wrong key, tampered, truncated, moved, or not encrypted.

    The message names the file by its lake-relative path (no PHI beyond what the path holds) and never the key.
    """


@dataclass(frozen=True, repr=False)
class RawZoneKey:
    """The master key; ``repr`` shows only the key id so it never lands in a log by accident."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise ValueError("the raw-zone key must be 32 bytes (AES-256)")

    @property
    def key_id(self) -> bytes:
        return hashlib.sha256(b"radplan raw zone key id\x00" + self.secret).digest()[:8]

    def __repr__(self) -> str:
        return f"RawZoneKey(key_id={self.key_id.hex()})"

    __str__ = __repr__


def parse_key(text: str) -> RawZoneKey:
    """A 32-byte key written as 64 hex digits or base64 (standard or URL-safe); the error never echoes the value."""
    text = text.strip()
    secret: bytes | None = None
    if len(text) == 64:
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            secret = None
    if secret is None:
        padded = (text + "=" * (-len(text) % 4)).encode("ascii", errors="replace")
        for alphabet in (None, b"-_"):
            try:
                candidate = base64.b64decode(padded, altchars=alphabet, validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(candidate) == 32:
                secret = candidate
                break
    if secret is None or len(secret) != 32:
        raise ValueError(f"{KEY_ENV_VAR} must be a 32-byte key as 64 hex digits or base64 (e.g. `openssl rand -base64 32`)")
    return RawZoneKey(secret)


def key_from_env(environ: dict | None = None) -> RawZoneKey | None:
    """The key from ``RADPLAN_RAW_ZONE_KEY``, or None when unset or empty."""
    value = raw_zone_key_text(environ)
    return parse_key(value) if value.strip() else None


def generate_key_text() -> str:
    return base64.b64encode(os.urandom(32)).decode("ascii")


def _file_cipher(key: RawZoneKey, file_nonce: bytes) -> AESGCM:
    file_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=file_nonce, info=FILE_KEY_INFO).derive(key.secret)
    return AESGCM(file_key)


def _chunk_nonce(index: int, final: bool) -> bytes:
    if index >= 1 << 88:
        raise OverflowError("too many chunks for one file")
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def _associated_data(header: bytes, relative_path: str) -> bytes:
    return header + relative_path.encode("utf-8")


def is_encrypted_prefix(prefix: bytes) -> bool:
    return prefix[: len(MAGIC)] == MAGIC


def is_encrypted_file(path: str | os.PathLike) -> bool:
    with open(path, "rb") as fh:
        return is_encrypted_prefix(fh.read(len(MAGIC)))


def encrypt_stream(source: BinaryIO, target: BinaryIO, key: RawZoneKey, relative_path: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Encrypt ``source`` into ``target`` chunk by chunk; returns the plaintext byte count."""
    if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk size must be in (0, {MAX_CHUNK_BYTES}]")
    file_nonce = os.urandom(12)
    header = HEADER.pack(MAGIC, VERSION, key.key_id, chunk_bytes, file_nonce)
    aad = _associated_data(header, relative_path)
    cipher = _file_cipher(key, file_nonce)
    target.write(header)
    total, index = 0, 0
    current = source.read(chunk_bytes)
    while True:
        # Look one chunk ahead: the last chunk (possibly empty) carries the final flag.
        following = source.read(chunk_bytes) if len(current) == chunk_bytes else b""
        final = not following
        target.write(cipher.encrypt(_chunk_nonce(index, final), current, aad))
        total += len(current)
        if final:
            return total
        current, index = following, index + 1


def _read_header(source: BinaryIO, key: RawZoneKey, relative_path: str) -> tuple[bytes, int, bytes]:
    header = source.read(HEADER.size)
    if len(header) < HEADER.size or not is_encrypted_prefix(header):
        raise RawZoneCryptoError(f"{relative_path}: not an encrypted raw-zone file (written before encryption was enabled, or replaced)")
    _, version, key_id, chunk_bytes, file_nonce = HEADER.unpack(header)
    if version != VERSION:
        raise RawZoneCryptoError(f"{relative_path}: encryption format version {version} is not supported (expected {VERSION})")
    if key_id != key.key_id:
        raise RawZoneCryptoError(
            f"{relative_path}: encrypted with key id {key_id.hex()}, but {KEY_ENV_VAR} has key id {key.key_id.hex()} (wrong key)"
        )
    if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
        raise RawZoneCryptoError(f"{relative_path}: corrupt header (chunk size {chunk_bytes})")
    return header, chunk_bytes, file_nonce


def decrypt_chunks(source: BinaryIO, key: RawZoneKey, relative_path: str) -> Iterator[bytes]:
    """Yield authenticated plaintext chunks; raises RawZoneCryptoError (naming the file) on any mismatch.

    A consumer sees only authenticated chunks, but a file cut or altered after chunk ``i`` fails only
    when that chunk is reached: treat the data as valid once the iterator is exhausted.
    """
    header, chunk_bytes, file_nonce = _read_header(source, key, relative_path)
    aad = _associated_data(header, relative_path)
    cipher = _file_cipher(key, file_nonce)
    sealed_bytes = chunk_bytes + TAG_BYTES
    index = 0
    current = source.read(sealed_bytes)
    while True:
        following = source.read(sealed_bytes) if len(current) == sealed_bytes else b""
        final = not following
        if len(current) < TAG_BYTES:
            raise RawZoneCryptoError(f"{relative_path}: truncated encrypted file (chunk {index} incomplete)")
        try:
            yield cipher.decrypt(_chunk_nonce(index, final), current, aad)
        except InvalidTag:
            raise RawZoneCryptoError(
                f"{relative_path}: authentication failed at chunk {index}: the file was altered, truncated, extended, "
                "or moved from another path"
            ) from None
        if final:
            return
        current, index = following, index + 1


def decrypt_stream(source: BinaryIO, target: BinaryIO, key: RawZoneKey, relative_path: str) -> int:
    """Decrypt ``source`` into ``target``; returns the plaintext byte count. Discard ``target`` on error."""
    total = 0
    for chunk in decrypt_chunks(source, key, relative_path):
        target.write(chunk)
        total += len(chunk)
    return total


def encrypt_bytes(data: bytes, key: RawZoneKey, relative_path: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> bytes:
    import io

    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, key, relative_path, chunk_bytes)
    return out.getvalue()


def decrypt_bytes(blob: bytes, key: RawZoneKey, relative_path: str) -> bytes:
    import io

    return b"".join(decrypt_chunks(io.BytesIO(blob), key, relative_path))
