"""The model hash validators compute over the files they download (SUBNET.md, "The model hash").

Directories in sorted order, files in each directory in sorted order; each file's sha256 is
base64-encoded, and those texts are fed in order into one sha256, itself base64-encoded.
Symlinks (as in the Hub cache's snapshot folders) are read through to the real files.
"""

import base64
import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20


def hash_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode("utf-8")


def hash_directory(path: str | Path) -> str:
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()  # os.walk then visits subdirectories in sorted order
        for name in sorted(files):
            digest.update(hash_file(os.path.join(root, name)).encode("utf-8"))
    return base64.b64encode(digest.digest()).decode("utf-8")


def hash_with_hotkey(model_hash: str, hotkey_ss58: str) -> str:
    """The later subnets' salted hash, so a copied model cannot claim another hotkey's hash."""
    return base64.b64encode(hashlib.sha256((model_hash + hotkey_ss58).encode("utf-8")).digest()).decode("utf-8")
