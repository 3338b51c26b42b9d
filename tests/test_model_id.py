import base64
import hashlib
import os

import pytest

from publishing.subnet.model_hash import hash_directory, hash_file, hash_with_hotkey
from publishing.subnet.model_id import ModelId, ModelIdError, parse_repo_id

SHA = "0123456789abcdef0123456789abcdef01234567"
HASH = base64.b64encode(hashlib.sha256(b"x").digest()).decode()


def test_round_trip_is_the_validators_format():
    model_id = ModelId("me", "my-model", commit=SHA, hash=HASH, competition_id="m1")
    text = model_id.to_compressed_str()
    assert text == f"me:my-model:{SHA}:{HASH}:m1"
    assert ModelId.from_compressed_str(text) == model_id


def test_missing_fields_are_written_none_and_four_fields_have_no_competition():
    assert ModelId("me", "m", hash=HASH).to_compressed_str() == f"me:m:None:{HASH}:None"
    parsed = ModelId.from_compressed_str(f"me:m:{SHA}:{HASH}")
    assert parsed.competition_id is None and parsed.commit == SHA
    assert ModelId.from_compressed_str("me:m:None:None:None") == ModelId("me", "m")


def test_the_longest_allowed_repo_id_fits_128_bytes():
    namespace, name = parse_repo_id("n" * 10 + "/" + "m" * 27)  # 38 characters
    assert len(ModelId(namespace, name, SHA, HASH, "m1").to_compressed_str().encode()) <= 128
    with pytest.raises(ModelIdError, match="over the chain's 128"):
        ModelId(namespace, name + "mm", SHA, HASH, "m1").to_compressed_str()


@pytest.mark.parametrize("repo_id, fragment", [
    ("no-namespace", "must be namespace/name"),
    ("a/b/c", "must be namespace/name"),
    ("me/bad:name", "must be namespace/name"),
    ("me/", "must be namespace/name"),
    ("me/" + "x" * 36, "39 characters"),
])
def test_bad_repo_ids(repo_id, fragment):
    with pytest.raises(ModelIdError, match=fragment):
        parse_repo_id(repo_id)


def test_hash_walks_sorted_directories_and_files(tmp_path):
    for rel, content in {"b.txt": b"b", "a.txt": b"a", "sub2/x": b"x", "sub1/y": b"y", "sub1/deep/z": b"z"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(content)
    os.symlink(tmp_path / "a.txt", tmp_path / "link")  # the Hub cache's snapshots are symlinks: read through them
    # SUBNET.md: a directory's own files in sorted order, then its subdirectories in sorted order
    order = [b"a", b"b", b"a", b"y", b"z", b"x"]  # a.txt, b.txt, link, sub1/y, sub1/deep/z, sub2/x
    outer = hashlib.sha256()
    for content in order:
        outer.update(base64.b64encode(hashlib.sha256(content).digest()))
    assert hash_directory(tmp_path) == base64.b64encode(outer.digest()).decode()
    assert hash_file(tmp_path / "link") == hash_file(tmp_path / "a.txt")
    assert len(hash_directory(tmp_path)) == 44


def test_hotkey_salted_hash():
    salted = hash_with_hotkey(HASH, "5Fhotkey")
    assert salted == base64.b64encode(hashlib.sha256((HASH + "5Fhotkey").encode()).digest()).decode()
    assert salted != hash_with_hotkey(HASH, "5Fother")
