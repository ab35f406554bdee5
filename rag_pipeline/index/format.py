"""The index directory on disk: file names, the manifest, and its checks.

Written by ``build-index`` (:mod:`rag_pipeline.index.build`) and read by the retriever
(:mod:`rag_pipeline.index.retriever`); both know the format from here, so reading an index never
imports the build stage. An index directory has one of two layouts, named by the manifest's
``layout`` (absent in format 1, which has only the first):

``sqlite`` (format 1; ``build-index``'s default, in-process engine):

- ``index.faiss``: the FAISS index (row i = chunk row i);
- ``chunks.sqlite``: the chunk store with each chunk's embedding (:mod:`rag_pipeline.index.store`);

``sharded`` (format 2; ``--engine ray``, or ``--layout sharded``), for corpora of millions of chunks:

- ``shards/part-NNNNN.parquet``: the chunks of rows ``[first, first + rows)`` (row groups of a few
  hundred rows, so one chunk is read without decoding the shard);
- ``shards/part-NNNNN.npy``: their embeddings, float32 ``(rows, dim)``, read by row (``os.pread``);
- ``keys.sqlite``: chunk id -> row and document id -> rows, for lookups by id;
- ``index.faiss`` and, for IVF indexes, ``index.ivfdata``: the merged inverted lists, on disk
  (FAISS ``OnDiskInvertedLists``), memory-mapped on reading;

and in both:

- ``bm25/``: the BM25 side of hybrid search, queried on disk (:mod:`rag_pipeline.index.bm25`;
  the manifest's ``bm25`` section holds its statistics); absent in indexes built before it was stored;

- ``manifest.json``: embedder id and weights hash, dimension, metric, normalization, chunking,
  index type, FAISS factory string and search settings (``nprobe``, ``ef_search``, ``rerank``),
  corpus fingerprint, counts, shard row counts, file hashes (sha256 and bytes), library
  versions, time. :class:`IndexManifest` types what readers rely on; :func:`read_manifest`, its
  one reader, checks those keys are there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypedDict, cast

from rag_pipeline.adapter_meta import KIND as ADAPTER_KIND
from rag_pipeline.adapter_meta import META_FILE as ADAPTER_META_FILE
from rag_pipeline.atomic import Artifact
from rag_pipeline.errors import IndexError_
from rag_pipeline.index.ann import c_stdout_silenced

MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
STORE_FILE = "chunks.sqlite"
IVFDATA_FILE = "index.ivfdata"
KEYS_FILE = "keys.sqlite"
SHARDS_DIR = "shards"
BM25_DIR = "bm25"  # rag_pipeline.index.bm25's files:
BM25_TERMS = f"{BM25_DIR}/terms.sqlite"  # term -> id, document frequency; (term, segment) -> its postings
BM25_ROWS = f"{BM25_DIR}/rows.u32"  # each posting's row within its segment
BM25_SCORES = f"{BM25_DIR}/scores.f32"  # each posting's BM25 weight
BM25_FILES = (BM25_TERMS, BM25_ROWS, BM25_SCORES)
LAYOUTS = ("sqlite", "sharded")
FORMAT_VERSIONS = {"sqlite": 1, "sharded": 2}
FORMAT_VERSION = FORMAT_VERSIONS["sqlite"]
KIND = "rag-index"
Layout = Literal["sqlite", "sharded"]


# The manifest as its readers see it (read_manifest checks every key these types require; build-index
# writes more, e.g. the corpus's document count, which no reader relies on).
class EmbedderRecord(TypedDict):
    """``embedder``: what embedded the chunks; loading with another embedder fails."""

    id: str
    weights_sha256: str
    dim: int


class CorpusRecord(TypedDict):
    """``corpus``: what was indexed."""

    fingerprint: str  # of the chunks and the settings that made them: build-index skips an unchanged corpus
    chunks: int  # rows in the FAISS index and the store


class _SearchRequired(TypedDict):
    type: str  # flat, ivf, hnsw (rag_pipeline.index.ann)


class SearchRecord(_SearchRequired, total=False):
    """``index``: the FAISS index and the search settings in force (:func:`rag_pipeline.index.ann.apply_search_params`)."""

    factory: str
    nprobe: int | None
    ef_search: int | None
    rerank: int  # candidates re-scored exactly from the stored embeddings (0: none)


class FileRecord(TypedDict, total=False):
    """``files[name]``: a data file's size and hash (:func:`file_record`)."""

    sha256: str
    bytes: int
    sha256_ends: str  # shard files and index.ivfdata: loading checks their first and last 64 KiB


class ShardsRecord(TypedDict):
    """``shards`` (sharded layout only)."""

    rows: list[int]  # rows per shard, in row order


class _ManifestRequired(TypedDict):
    embedder: EmbedderRecord
    files: dict[str, FileRecord]  # data file (relative path) -> its record
    corpus: CorpusRecord
    index: SearchRecord
    settings: dict[str, Any]  # the build settings that change content or search: a change rebuilds an unchanged corpus


class IndexManifest(_ManifestRequired, total=False):
    """``manifest.json``, as :func:`read_manifest` returns it."""

    kind: str  # KIND; absent in manifests written before it existed
    format_version: int
    layout: Layout  # absent in format 1: sqlite
    shards: ShardsRecord  # the sharded layout's
    metric: str
    normalized: bool


# Keys every reader relies on (Retriever.load, build-index --update); a manifest lacking one is damaged.
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "embedder": tuple(EmbedderRecord.__annotations__),
    "files": (INDEX_FILE, STORE_FILE),
    "corpus": tuple(CorpusRecord.__annotations__),
    "index": tuple(_SearchRequired.__annotations__),
    "settings": (),
}
# What a sharded manifest needs instead of REQUIRED_KEYS["files"], and beyond it.
SHARDED_FILES = (INDEX_FILE, KEYS_FILE)
# The directory build-index may replace: manifests written before "kind" existed are known by their keys.
ARTIFACT = Artifact("an index", MANIFEST, KIND, keys=tuple(REQUIRED_KEYS),
                    allowed=frozenset({MANIFEST, INDEX_FILE, STORE_FILE, IVFDATA_FILE, KEYS_FILE, SHARDS_DIR, BM25_DIR}), flag="--index")
# Other commands' outputs, known by their marker files, so that an --index naming one says what it is
# (and where its index is, when it records one) instead of suggesting build-index into it, which
# would refuse a folder it did not write. Each: (artifact, the JSON keys holding the index it used).
OTHER_OUTPUTS: tuple[tuple[Artifact, tuple[str, ...]], ...] = (
    (Artifact("a trained adapter (a train-generator output; adapters go to --adapter)", ADAPTER_META_FILE, ADAPTER_KIND,
              keys=("base_model",)), ()),
    (Artifact("a LoRA adapter (adapters go to --adapter)", "adapter_config.json", keys=("peft_type",)), ()),
    (Artifact("an evaluation report (an evaluate output)", "metrics.json", keys=("schema_version", "results")), ("config", "index")),
    (Artifact("a RAFT dataset (a build-raft-dataset output; datasets go to train-generator --dataset)", MANIFEST, "raft-dataset"),
     ("index", "path")),
    (Artifact("a model export (an export output)", "export.json", "rag-export"), ()),
)
# Loading with verify hashes every file whole except the bulk data, the files of shards/ and bm25/
# and index.ivfdata, which are checked by their first and last 64 KiB (headers, Parquet footers),
# since hashing 20 GB on every `ask` would take minutes. Every file's size is always
# checked, so truncation is caught. Format 1's chunks.sqlite is always hashed whole.
_ENDS = 64 << 10


def layout(manifest: IndexManifest) -> Layout:
    """The manifest's layout: ``sqlite`` (format 1, also when absent) or ``sharded``."""
    return manifest.get("layout", "sqlite")


def shard_files(i: int) -> tuple[str, str]:
    """Paths, relative to the index directory, of shard ``i``'s chunks (Parquet) and vectors (npy)."""
    return f"{SHARDS_DIR}/part-{i:05d}.parquet", f"{SHARDS_DIR}/part-{i:05d}.npy"


def shard_rows(manifest: IndexManifest) -> list[int]:
    """Rows per shard of a sharded index, in row order (shard i holds the rows after shards 0..i-1)."""
    return [int(r) for r in manifest["shards"]["rows"]]


def read_faiss_index(index_dir: Path, on_disk: bool):  # -> faiss.Index
    """The directory's FAISS index; with ``on_disk``, its inverted lists are memory-mapped from
    :data:`IVFDATA_FILE` beside it (wherever the directory has moved since the build).

    Raises:
        IndexError_: FAISS cannot read the file.
    """
    import faiss

    path = Path(index_dir) / INDEX_FILE
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR if on_disk else 0
    try:
        with c_stdout_silenced():  # FAISS prints a note on stdout when the directory was renamed since the build
            return faiss.read_index(str(path), flags)
    except RuntimeError as e:
        raise IndexError_(f"{path} cannot be read by FAISS ({str(e).splitlines()[0]}): rebuild with --force") from None


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checked_by_ends(path: Path) -> bool:
    """Whether loading checks this file by its ends only: a shard file, the stored BM25's two arrays or the on-disk
    IVF lists (the BM25 term table, small beside them, is hashed whole)."""
    path = Path(path)
    return path.parent.name == SHARDS_DIR or path.name == IVFDATA_FILE or (path.parent.name == BM25_DIR and path.suffix != ".sqlite")


def file_record(path: Path) -> FileRecord:
    """What the manifest records of a data file: its sha256 and size (and, for a shard file, a BM25
    array or ``index.ivfdata``, the sha256 of its first and last 64 KiB, which loading checks instead)."""
    path = Path(path)
    rec: FileRecord = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    if _checked_by_ends(path):
        rec["sha256_ends"] = _sha256_ends(path)
    return rec


def _sha256_ends(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        h.update(f.read(_ENDS))
        f.seek(max(0, path.stat().st_size - _ENDS))
        h.update(f.read(_ENDS))
    return h.hexdigest()


def read_manifest(index_dir: str | Path) -> IndexManifest:
    """The manifest of an index directory, the one reader of ``manifest.json`` (build-index's
    ``--update`` reads the old one here too); missing, unreadable or lacking a key
    :class:`IndexManifest` requires is an IndexError_."""
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise IndexError_(not_an_index(index_dir))
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexError_(f"{path} is corrupt ({e}): rebuild the index with --force") from None
    if not isinstance(manifest, dict):
        raise IndexError_(f"{path} is not a rag-pipeline index manifest: rebuild the index with --force")
    if manifest.get("kind", KIND) != KIND:  # manifests written before "kind" existed are checked by their keys below
        raise IndexError_(not_an_index(index_dir, manifest["kind"]))
    if layout(manifest) not in LAYOUTS:
        raise IndexError_(f"{path} has layout {layout(manifest)!r}, which this version cannot read (known: {', '.join(LAYOUTS)}): "
                          "upgrade rag-pipeline or rebuild the index with --force")
    missing = _missing_keys(manifest)
    if missing:
        raise IndexError_(f"{path} lacks {', '.join(missing)} (damaged or edited): rebuild the index with "
                          f"`rag-pipeline build-index PATH --index {index_dir} --force`")
    return cast(IndexManifest, manifest)  # its required keys checked above


def not_an_index(index_dir: str | Path, kind: object = None) -> str:
    """Why ``index_dir`` is not an index, and what to pass instead: it does not exist, is a file, an
    empty folder, another command's output (:data:`OTHER_OUTPUTS`), or a folder of other files.

    Only a path build-index would write (missing or empty) gets "build it with build-index" there.
    """
    p = Path(index_dir)
    want = "pass the index folder build-index wrote (it holds manifest.json and index.faiss)"
    if not p.exists():
        return f"{p} is not an index directory (it does not exist): build it with `rag-pipeline build-index PATH --index {p}`, or {want}"
    if not p.is_dir():
        return f"{p} is a file, not an index directory: {want}; to index this file, run `rag-pipeline build-index {p} --index NEW_DIR`"
    for artifact, keys in OTHER_OUTPUTS:
        if artifact.marked(p):
            used = _recorded_index(p / artifact.marker, keys)
            return f"{p} is {artifact.what}, not an index: " + (f"its index is {used}: pass --index {used}" if used else want)
    if kind is not None:
        return f"{p} holds a {kind!r} {MANIFEST}, not an index's: {want}"
    if not any(p.iterdir()):
        return f"{p} is an empty folder, not an index: build one into it with `rag-pipeline build-index PATH --index {p}`, or {want}"
    return (f"{p} is not an index directory (no {MANIFEST}; it holds other files): {want}; to build one, run "
            "`rag-pipeline build-index PATH --index NEW_DIR` (build-index never writes into a folder of other files)")


def _recorded_index(marker: Path, keys: tuple[str, ...]) -> Path | None:
    """The index another command's output records at ``keys`` in its marker file, if it is an index now
    (a relative path is tried beside the marker, where build-raft-dataset keeps its own index, then as given)."""
    value: object = None
    if keys:
        try:
            value = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
    if not isinstance(value, str) or not value:
        return None
    for candidate in (marker.parent / value, Path(value)):
        if candidate.resolve() != marker.parent.resolve() and ARTIFACT.marked(candidate):
            return candidate
    return None


def _missing_keys(manifest: dict[str, Any]) -> list[str]:
    """The required keys (``section`` or ``section.key``) a manifest lacks, in :data:`REQUIRED_KEYS` order."""
    sharded = layout(manifest) == "sharded"
    required = {**REQUIRED_KEYS, "files": SHARDED_FILES, "shards": ("rows",)} if sharded else REQUIRED_KEYS
    missing = []
    for section, keys in required.items():
        value = manifest.get(section)
        if not isinstance(value, dict):
            missing.append(f"'{section}'")
            continue
        missing += [f"'{section}.{k}'" for k in keys if k not in value]
    return missing


def check_files(index_dir: Path, manifest: IndexManifest, verify: bool = True) -> None:
    """Fail unless the data files exist with the manifest's sizes (and, with ``verify``, its sha256;
    for shard files, the BM25 arrays and ``index.ivfdata``, that of their first and last 64 KiB)."""
    names = list(manifest["files"])
    if layout(manifest) != "sharded":
        names = [INDEX_FILE, STORE_FILE, *(n for n in names if n in BM25_FILES)]
    for name in names:
        path = index_dir / name
        want = manifest["files"][name]
        if not path.is_file():
            raise IndexError_(f"{path} is missing: rebuild the index with --force")
        if path.stat().st_size != want["bytes"]:
            raise IndexError_(f"{path} is truncated or changed ({path.stat().st_size} bytes, manifest says {want['bytes']}): rebuild the index with --force")
        if not verify:
            continue
        by_ends = _checked_by_ends(path) and "sha256_ends" in want  # decided by the name: never for chunks.sqlite
        ok = _sha256_ends(path) == want["sha256_ends"] if by_ends else sha256_file(path) == want["sha256"]
        if not ok:
            raise IndexError_(f"{path} does not match its manifest hash (corrupt or modified): rebuild the index with --force")
