"""The index directory on disk: file names, the manifest, and its checks.

Written by ``build-index`` (:mod:`rag_pipeline.index`) and read by the retriever
(:mod:`rag_pipeline.retriever`); both know the format from here, so reading an index never
imports the build stage. An index directory holds:

- ``index.faiss``: the FAISS index (row i = chunk row i);
- ``chunks.sqlite``: the chunk store (:mod:`rag_pipeline.store`);
- ``manifest.json``: embedder id and weights hash, dimension, metric, normalization, chunking,
  index type and parameters, corpus fingerprint, counts, file hashes (sha256 and bytes),
  library versions, time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rag_pipeline.atomic import Artifact
from rag_pipeline.errors import IndexError_

MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
STORE_FILE = "chunks.sqlite"
FORMAT_VERSION = 1
KIND = "rag-index"
# Keys every reader relies on (Retriever.load, build-index --update); a manifest lacking one is damaged.
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "embedder": ("id", "weights_sha256", "dim"),
    "files": (INDEX_FILE, STORE_FILE),
    "corpus": ("fingerprint", "chunks"),
    "index": ("type",),
    "settings": (),
}
# The directory build-index may replace: manifests written before "kind" existed are known by their keys.
ARTIFACT = Artifact("an index", MANIFEST, KIND, keys=tuple(REQUIRED_KEYS), allowed=frozenset({MANIFEST, INDEX_FILE, STORE_FILE}), flag="--index")


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: Path) -> dict[str, int | str]:
    """What the manifest records of a data file: its sha256 and size."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def read_manifest(index_dir: str | Path) -> dict:
    """The manifest of an index directory; missing, unreadable or lacking a required key is an IndexError_."""
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise IndexError_(f"{index_dir} is not an index directory (no {MANIFEST}): build it with `rag-pipeline build-index PATH --index {index_dir}`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexError_(f"{path} is corrupt ({e}): rebuild the index with --force") from None
    if not isinstance(manifest, dict):
        raise IndexError_(f"{path} is not a rag-pipeline index manifest: rebuild the index with --force")
    if manifest.get("kind", KIND) != KIND:  # manifests written before "kind" existed are checked by their keys below
        raise IndexError_(f"{index_dir} holds a {manifest['kind']!r} manifest, not an index's: pass an index directory written by build-index")
    missing = _missing_keys(manifest)
    if missing:
        raise IndexError_(f"{path} lacks {', '.join(missing)} (damaged or edited): rebuild the index with "
                          f"`rag-pipeline build-index PATH --index {index_dir} --force`")
    return manifest


def _missing_keys(manifest: dict) -> list[str]:
    """The required keys (``section`` or ``section.key``) a manifest lacks, in :data:`REQUIRED_KEYS` order."""
    missing = []
    for section, keys in REQUIRED_KEYS.items():
        value = manifest.get(section)
        if not isinstance(value, dict):
            missing.append(f"'{section}'")
            continue
        missing += [f"'{section}.{k}'" for k in keys if k not in value]
    return missing


def check_files(index_dir: Path, manifest: dict, verify: bool = True) -> None:
    """Fail unless the data files exist with the manifest's sizes (and, with ``verify``, its sha256)."""
    for name in (INDEX_FILE, STORE_FILE):
        path = index_dir / name
        want = manifest["files"][name]
        if not path.is_file():
            raise IndexError_(f"{path} is missing: rebuild the index with --force")
        if path.stat().st_size != want["bytes"]:
            raise IndexError_(f"{path} is truncated or changed ({path.stat().st_size} bytes, manifest says {want['bytes']}): rebuild the index with --force")
        if verify and sha256_file(path) != want["sha256"]:
            raise IndexError_(f"{path} does not match its manifest hash (corrupt or modified): rebuild the index with --force")
