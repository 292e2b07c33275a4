"""Raw zone encrypted at rest: format properties, lake wiring, and the imaging/genomics/EHR assets on an encrypted lake."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tracemalloc
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from radplan import crypto
from radplan.privacy import CanaryMatcher, load_canaries
from radplan_resources import LakeResource

PATIENT = "p0123456789abcdef"


@pytest.fixture
def raw_key(monkeypatch) -> str:
    text = crypto.generate_key_text()
    monkeypatch.setenv(crypto.KEY_ENV_VAR, text)
    return text


def _encrypted_lake(tmp_path: Path) -> LakeResource:
    return LakeResource(root=str(tmp_path / "lake"), raw_zone_encryption=True)


def _write_raw_files(lake: LakeResource, files: dict[str, bytes]) -> Path:
    with lake.rebuild_patient_dir("raw", "dicom", PATIENT) as staging:
        for name, data in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
    return lake.root_path / "raw" / "dicom" / PATIENT


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096, 100_000])
def test_round_trip_at_chunk_boundaries(size):
    key = crypto.parse_key(crypto.generate_key_text())
    data = os.urandom(size)
    sealed = crypto.encrypt_bytes(data, key, "raw/dicom/a.dcm", chunk_bytes=4096)
    assert crypto.decrypt_bytes(sealed, key, "raw/dicom/a.dcm") == data
    assert sealed.startswith(crypto.MAGIC) and key.secret not in sealed
    # A fresh random nonce per file: the same plaintext never gives the same ciphertext.
    assert crypto.encrypt_bytes(data, key, "raw/dicom/a.dcm", chunk_bytes=4096) != sealed


def test_truncated_reordered_and_extended_files_are_rejected():
    key = crypto.parse_key(crypto.generate_key_text())
    sealed = crypto.encrypt_bytes(os.urandom(3 * 4096 + 10), key, "raw/x", chunk_bytes=4096)
    header, body = sealed[: crypto.HEADER.size], sealed[crypto.HEADER.size :]
    sealed_chunk = 4096 + crypto.TAG_BYTES
    chunks = [body[i : i + sealed_chunk] for i in range(0, len(body), sealed_chunk)]
    variants = {
        "cut at a chunk boundary": header + b"".join(chunks[:2]),
        "cut mid-chunk": sealed[:-5],
        "chunks reordered": header + chunks[1] + chunks[0] + b"".join(chunks[2:]),
        "chunk dropped": header + chunks[0] + b"".join(chunks[2:]),
        "bytes appended": sealed + os.urandom(40),
        "header only": header,
    }
    for blob in variants.values():
        with pytest.raises(crypto.RawZoneCryptoError, match="raw/x"):
            crypto.decrypt_bytes(blob, key, "raw/x")


def test_key_parsing_accepts_hex_and_base64_and_never_echoes_a_bad_value():
    secret = os.urandom(32)
    for text in (secret.hex(), base64.b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode().rstrip("=")):
        assert crypto.parse_key(text).secret == secret
    bad = "not-a-key-but-a-password-123"
    with pytest.raises(ValueError) as error:
        crypto.parse_key(bad)
    assert bad not in str(error.value)
    with pytest.raises(ValueError):
        crypto.parse_key(base64.b64encode(os.urandom(16)).decode())  # AES-128 length
    key = crypto.parse_key(secret.hex())
    assert secret.hex() not in repr(key) and key.key_id.hex() in repr(key)


def test_lake_files_are_sealed_on_disk_and_read_back_through_the_resource(tmp_path, raw_key):
    lake = _encrypted_lake(tmp_path)
    dicom = b"\0" * 128 + b"DICM" + b"PATIENT^CANARY" * 50
    folder = _write_raw_files(lake, {"s1/1.dcm": dicom, "s1/2.dcm": b"second"})
    on_disk = (folder / "s1" / "1.dcm").read_bytes()
    assert on_disk.startswith(crypto.MAGIC) and b"DICM" not in on_disk and b"CANARY" not in on_disk
    assert lake.read_raw_bytes(folder / "s1" / "1.dcm") == dicom
    with lake.open_raw(folder / "s1" / "1.dcm") as plain:
        assert plain.read_bytes() == dicom and not str(plain).startswith(str(lake.root_path))
    assert not plain.exists()  # the decrypted copy is gone once the block ends

    frame = pd.DataFrame({"patient_key": [PATIENT], "source_patient_id": ["MRN-CANARY-1"], "n": [3]})
    lake.write_table(frame, "raw", "inventory_test")
    lake.write_table(frame, "raw", "per_patient", PATIENT)
    for path in (lake.cohort_table_path("raw", "inventory_test"), lake.partition_dir("raw", "per_patient", PATIENT) / "part-0.parquet"):
        assert path.read_bytes()[:4] != b"PAR1" and b"MRN-CANARY-1" not in path.read_bytes()
    pd.testing.assert_frame_equal(lake.read_table("raw", "inventory_test"), frame)
    pd.testing.assert_frame_equal(lake.read_table("raw", "per_patient", PATIENT), frame)
    # Every partition at once: the file columns, then patient_key restored from the folder name.
    pd.testing.assert_frame_equal(lake.read_table("raw", "per_patient"), frame[["source_patient_id", "n", "patient_key"]])
    # Other zones are untouched by raw-zone encryption.
    lake.write_table(frame.drop(columns="source_patient_id"), "features", "plain_table", PATIENT)
    assert (lake.partition_dir("features", "plain_table", PATIENT) / "part-0.parquet").read_bytes()[:4] == b"PAR1"


def test_tampered_file_is_refused_with_its_lake_path(tmp_path, raw_key):
    lake = _encrypted_lake(tmp_path)
    folder = _write_raw_files(lake, {"s1/1.dcm": os.urandom(10_000)})
    target = folder / "s1" / "1.dcm"
    data = bytearray(target.read_bytes())
    data[crypto.HEADER.size + 500] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(crypto.RawZoneCryptoError, match=f"raw/dicom/{PATIENT}/s1/1.dcm: authentication failed"):
        lake.read_raw_bytes(target)
    with pytest.raises(crypto.RawZoneCryptoError):
        with lake.open_raw(target):
            pass


def test_swapped_files_do_not_decrypt(tmp_path, raw_key):
    lake = _encrypted_lake(tmp_path)
    folder = _write_raw_files(lake, {"a.dcm": b"patient A study", "b.dcm": b"patient B study"})
    a, b = (folder / "a.dcm").read_bytes(), (folder / "b.dcm").read_bytes()
    (folder / "a.dcm").write_bytes(b)
    (folder / "b.dcm").write_bytes(a)
    for name in ("a.dcm", "b.dcm"):
        with pytest.raises(crypto.RawZoneCryptoError, match=f"{name}: authentication failed"):
            lake.read_raw_bytes(folder / name)


def test_wrong_key_missing_key_and_unencrypted_files_fail_clearly(tmp_path, raw_key, monkeypatch):
    lake = _encrypted_lake(tmp_path)
    folder = _write_raw_files(lake, {"a.dcm": b"study"})
    right_id = crypto.parse_key(raw_key).key_id.hex()
    monkeypatch.setenv(crypto.KEY_ENV_VAR, crypto.generate_key_text())
    with pytest.raises(crypto.RawZoneCryptoError, match=rf"raw/dicom/{PATIENT}/a.dcm: encrypted with key id {right_id}.*wrong key"):
        lake.read_raw_bytes(folder / "a.dcm")
    monkeypatch.delenv(crypto.KEY_ENV_VAR)
    with pytest.raises(RuntimeError, match="RADPLAN_RAW_ZONE_KEY is not set"):
        lake.read_raw_bytes(folder / "a.dcm")
    # A lake with encryption off refuses sealed files instead of handing ciphertext to a parser.
    with pytest.raises(crypto.RawZoneCryptoError, match="encrypted at rest, but this lake has raw_zone_encryption off"):
        LakeResource(root=lake.root).read_raw_bytes(folder / "a.dcm")
    # With encryption on, a plaintext file in the raw zone (planted or left from before) is refused too.
    monkeypatch.setenv(crypto.KEY_ENV_VAR, raw_key)
    (folder / "planted.dcm").write_bytes(b"plaintext replacement")
    with pytest.raises(crypto.RawZoneCryptoError, match="planted.dcm: not an encrypted raw-zone file"):
        lake.read_raw_bytes(folder / "planted.dcm")


def test_streaming_keeps_memory_flat_on_a_50_mb_file(tmp_path):
    key = crypto.parse_key(crypto.generate_key_text())
    size = 50 * 1024 * 1024
    plain, sealed, restored = tmp_path / "big.bin", tmp_path / "big.enc", tmp_path / "big.out"
    with open(plain, "wb") as fh:
        for _ in range(size // (1 << 20)):
            fh.write(os.urandom(1 << 20))
    tracemalloc.start()
    try:
        with open(plain, "rb") as source, open(sealed, "wb") as target:
            assert crypto.encrypt_stream(source, target, key, "raw/genomics/big.bam") == size
        _, encrypt_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with open(sealed, "rb") as source, open(restored, "wb") as target:
            assert crypto.decrypt_stream(source, target, key, "raw/genomics/big.bam") == size
        _, decrypt_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A few 1 MiB chunks in flight, not the 50 MiB file.
    assert encrypt_peak < 8 * 1024 * 1024 and decrypt_peak < 8 * 1024 * 1024, (encrypt_peak, decrypt_peak)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(restored) == digest(plain)


def _tree_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_encrypted_lake_gives_the_same_outputs_and_no_plaintext_at_rest(plain_home, encrypted_home, security_cohort):
    # Data files only: raw/.manifests holds the lake's integrity manifests (names, sizes, SHA-256 of the ciphertext).
    raw = encrypted_home.lake / "raw"
    raw_files = [p for p in raw.rglob("*") if p.is_file() and not p.relative_to(raw).parts[0].startswith(".")]
    kinds = Counter(p.relative_to(encrypted_home.lake / "raw").parts[0] for p in raw_files)
    assert {"dicom", "genomics", "ehr"} <= set(kinds) and len(raw_files) > 20, kinds
    canaries = load_canaries(security_cohort / "truth" / "phi_canaries.json")
    matcher = CanaryMatcher(canaries)
    for path in raw_files:
        data = path.read_bytes()
        assert data.startswith(crypto.MAGIC), path
        assert data[128:132] != b"DICM" and b"PAR1" not in data[:4] + data[-4:] and not data.startswith(b"\x1f\x8b"), path
        assert not matcher.find(data.decode("latin-1")), path
    # The same check finds canaries in the unencrypted raw zone, so the loop above can fail.
    plain_raw = [p for p in (plain_home.lake / "raw" / "dicom").rglob("*.dcm")]
    assert any(matcher.find(p.read_bytes().decode("latin-1")) for p in plain_raw)

    for zone in ("deid", "features"):
        assert _tree_digests(encrypted_home.lake / zone) == _tree_digests(plain_home.lake / zone), zone
    # Quarantine ids hash the source path (a temporary folder), so compare what was quarantined per stage.
    stages = lambda lake: Counter(p.parent.parent.name for p in (lake / "quarantine").rglob("reason.json"))  # noqa: E731
    assert stages(encrypted_home.lake) == stages(plain_home.lake)


@pytest.mark.slow
def test_the_key_is_never_stored_or_logged(encrypted_home):
    secret = crypto.parse_key(encrypted_home.raw_key).secret
    needles = [encrypted_home.raw_key.encode(), secret, secret.hex().encode(), base64.urlsafe_b64encode(secret)]
    scanned = 0
    for path in encrypted_home.home.rglob("*"):
        if path.is_file() and "landing" not in path.relative_to(encrypted_home.home).parts:
            data = path.read_bytes()
            assert not any(needle in data for needle in needles), path
            scanned += 1
    assert scanned > 50  # lake (all zones, audit log) and the Dagster instance's run/event storage


def test_plain_parquet_is_what_the_resource_hands_back(tmp_path, raw_key):
    """read_raw_bytes returns real Parquet bytes that pyarrow can open (what the EHR assets rely on)."""
    lake = _encrypted_lake(tmp_path)
    frame = pd.DataFrame({"code": ["C34.1", "E11.9"], "value": [1.5, 2.0]})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    folder = _write_raw_files(lake, {"conditions.parquet": buffer.getvalue()})
    assert pq.read_table(io.BytesIO(lake.read_raw_bytes(folder / "conditions.parquet"))).to_pandas().equals(frame)
