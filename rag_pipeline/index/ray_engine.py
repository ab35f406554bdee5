"""``build-index --engine ray``: the sharded build's worker steps on a Ray cluster, with Ray Data.

Needs the ``distributed`` extra (``pip install '.[distributed]'``, which is ``ray[data]``); nothing
else imports Ray, so the default engine runs without it. What runs where:

- the driver (the ``build-index`` process, on the head node or any node of the cluster) lists the
  inputs, plans blocks, drops duplicate chunks from their hashes, trains the FAISS index on a
  seeded sample and merges the shards' inverted lists on disk (:mod:`rag_pipeline.index.sharded`);
- chunking runs in a Ray Data actor pool over the blocks (:class:`ChunkWorker`: the embedder's
  tokenizer loaded once per actor), staging chunks as Parquet;
- embedding runs in a second actor pool, one actor per GPU, or per ``--worker-cpus`` CPUs where
  the cluster has no GPU (:class:`EmbedWorker`: the model loaded once per actor), each writing
  whole shards (Parquet chunks + ``.npy`` vectors);
- each group of consecutive shards (at least 65,536 vectors) is added to a copy of the trained empty
  index by a Ray task.

Workers read the inputs and write into the index's temporary directory themselves, so on a
multi-node cluster every node must see the inputs and the index's parent folder at the same path
(a shared filesystem). The package must be importable on every node (installed, or the checkout on
the shared filesystem: a local cluster started here gets this checkout on its ``PYTHONPATH``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from rag_pipeline import errors
from rag_pipeline.errors import ConfigError, DeviceError, RagError
from rag_pipeline.index import ann as ann
from rag_pipeline.index.embed import load_embedder
from rag_pipeline.index.format import IndexManifest
from rag_pipeline.index.sharded import ChunkSettings, chunk_block, embed_shard, job_from_json, job_json
from rag_pipeline.index.store import vectors_by_id

log = logging.getLogger(__name__)


def _import_ray():  # -> module
    try:
        import ray
        import ray.data  # noqa: F401  (the extra is ray[data]: fail here, not in a worker)
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data, which is not installed: pip install '.[distributed]' "
                          "(or pip install 'ray[data]'), or use the default --engine local") from None
    return ray


@contextlib.contextmanager
def connect(address: str = "", num_cpus: int = 0, object_store_mb: int = 0) -> Iterator[None]:
    """Join the cluster at ``address`` (``auto``, ``HOST:6379``, ``ray://HOST:10001``), or start a
    local one (``num_cpus``: 0 = all cores; ``object_store_mb``: 0 = Ray's default) and shut it
    down at the end. An already initialised Ray (a caller's) is used as it is and left running.

    Raises:
        ConfigError: Ray is not installed, or the cluster cannot be reached.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield
        return
    root = str(Path(__file__).resolve().parent.parent.parent)  # this checkout, for workers started here
    path = os.pathsep.join([root, *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])])
    # configure_logging=False: Ray leaves the process's logging (the CLI's handlers and formats) alone.
    kwargs = {"runtime_env": {"env_vars": {"PYTHONPATH": path}}, "include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus or None, object_store_memory=(object_store_mb << 20) or None, **kwargs)
    except Exception as e:  # Ray raises bare Exception for a raylet that does not start in time
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise ConfigError(f"cannot start or join {where} ({str(e).splitlines()[0][:200]}): check --ray-address "
                          "(`ray status` on the head node), or leave it empty to start a local cluster") from None
    try:
        yield
    finally:
        ray.shutdown()


def rag_error_in(e: BaseException) -> RagError | None:
    """The user-facing error a worker raised, found in the chain of Ray's wrappers (None if none)."""
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        cause = getattr(x, "cause", None)  # RayTaskError keeps the worker's exception here
        if isinstance(cause, RagError):
            return cause
        if isinstance(x, RagError) and type(x).__module__.startswith("rag_pipeline"):
            return x
        x = x.__cause__ or (cause if isinstance(cause, BaseException) else None)
    return None


def _load_embedder(name: str, device: str, trust_remote_code: bool, weights_hash: str):  # -> (Embedder, ConfigError | None)
    """The worker's embedder, and the error to return for every job when its weights are not the
    driver's (the manifest records the driver's hash; another node may resolve ``name`` to other files)."""
    import socket

    embedder = load_embedder(name, device, trust_remote_code)
    if embedder.weights_hash == weights_hash:
        return embedder, None
    return embedder, ConfigError(f"embedder {name} on Ray node {socket.gethostname()} has weights {embedder.weights_hash[:12]}, "
                                 f"the driver's {weights_hash[:12]}: give every node the same model files (e.g. --embedder "
                                 "as a path on the shared filesystem)")


def _set_threads(threads: int, torch: bool = True) -> None:
    """Limit FAISS (and torch, unless ``torch`` is False) to the CPUs this worker was given (they
    default to every core). A FAISS-only task skips torch: importing it takes seconds of a CPU lease."""
    import faiss

    faiss.omp_set_num_threads(threads)
    if not torch:
        return
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(threads)


class ChunkWorker:
    """Ray Data actor: chunks blocks of input (the embedder's tokenizer loaded once)."""

    def __init__(self, embedder: str, trust_remote_code: bool, weights_hash: str, settings: dict, staging: str) -> None:
        _set_threads(1)
        self.embedder, self.mismatch = _load_embedder(embedder, "cpu", trust_remote_code, weights_hash)
        self.settings = ChunkSettings(**settings)
        self.staging = Path(staging)

    def __call__(self, batch: dict) -> dict:
        return {"result": [_guarded(lambda job: chunk_block(job, self.embedder.token_offsets, self.settings, self.staging), j, self.mismatch)
                           for j in batch["job"]]}


class EmbedWorker:
    """Ray Data actor: embeds and writes whole shards (the model loaded once per actor)."""

    def __init__(self, embedder: str, device: str, trust_remote_code: bool, weights_hash: str, threads: int, batch_size: int, dim: int,
                 out_dir: str, reuse_from: tuple[str, dict] | None) -> None:
        _set_threads(threads)
        self.embedder, self.mismatch = _load_embedder(embedder, device, trust_remote_code, weights_hash)
        self.batch_size, self.dim, self.out_dir = batch_size, dim, Path(out_dir)
        self.lookup = vectors_by_id(*reuse_from)[0] if reuse_from else None

    def __call__(self, batch: dict) -> dict:
        def encode(texts: list[str]):
            return self.embedder.encode(texts, batch_size=self.batch_size)

        return {"result": [_guarded(lambda job: embed_shard(job, encode, self.dim, self.out_dir, self.lookup), j, self.mismatch)
                           for j in batch["job"]]}


def _guarded(fn, job: str, refuse: RagError | None = None) -> str:
    """Run a worker step (or, given ``refuse``, raise it instead); a user-facing error comes back as
    data (Ray's wrappers would bury it in a traceback, and do not carry the exception's cause
    across processes)."""
    try:
        if refuse is not None:
            raise refuse
        return job_json(fn(job_from_json(job)))
    except RagError as e:
        return job_json({ERROR_KEY: type(e).__name__, "message": str(e)})


ERROR_KEY = "__rag_error__"


def _raise_returned_error(results: list[dict]) -> None:
    for r in results:
        if ERROR_KEY in r:
            cls = getattr(errors, r[ERROR_KEY], RagError)
            raise (cls if isinstance(cls, type) and issubclass(cls, RagError) else RagError)(r["message"])


def _add_shard(job: tuple[str, list[str], int, str], threads: int) -> int:
    _set_threads(threads, torch=False)
    return ann.add_shard_file(*job)


class RayRunner:
    """Runs the sharded build's worker steps on the connected Ray cluster (see :mod:`rag_pipeline.index.sharded`)."""

    name = "ray"

    def __init__(self, embedder: str, device: str, trust_remote_code: bool, batch_size: int, dim: int, weights_hash: str,
                 workers: int = 0, worker_cpus: int = 1) -> None:
        ray = _import_ray()
        res = ray.cluster_resources()
        cpus, gpus = max(1, int(res.get("CPU", 1))), int(res.get("GPU", 0))
        if device == "cuda" and not gpus:
            raise DeviceError("--device cuda, but the Ray cluster has no GPU: use --device cpu (or auto), or add GPU nodes")
        self.use_gpu = gpus > 0 and device != "cpu"
        self.cpus_per_worker = 1 if self.use_gpu else min(worker_cpus, cpus)
        self.workers = workers or (gpus if self.use_gpu else max(1, cpus // self.cpus_per_worker))
        self.embedder, self.trust, self.batch_size, self.dim = embedder, trust_remote_code, batch_size, dim
        self.weights_hash = weights_hash  # the driver's: workers refuse to chunk or embed with other weights
        self.cluster = {"cpus": cpus, "gpus": gpus, "nodes": len([n for n in ray.nodes() if n.get("Alive")])}
        log.info("Ray cluster: %d nodes, %d CPUs, %d GPUs; %d embedding workers (%s)", self.cluster["nodes"], cpus, gpus,
                 self.workers, "1 GPU each" if self.use_gpu else f"{self.cpus_per_worker} CPUs each")

    def _map(self, jobs: list[dict], cls: type, kwargs: dict, workers: int, num_cpus: float, num_gpus: float) -> list[dict]:
        import ray.data

        if not jobs:
            return []
        ds = ray.data.from_items([{"job": job_json(j)} for j in jobs], override_num_blocks=len(jobs))
        ds = ds.map_batches(cls, fn_constructor_kwargs=kwargs, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(workers, len(jobs))),
                            num_cpus=num_cpus, num_gpus=num_gpus)
        try:
            results = [job_from_json(r["result"]) for r in ds.take_all()]
        except Exception as e:
            err = rag_error_in(e)
            if err is not None:
                raise type(err)(str(err)) from None
            raise
        _raise_returned_error(results)
        return results

    def chunk(self, jobs: list[dict], settings: ChunkSettings, staging: Path) -> list[dict]:
        kwargs = {"embedder": self.embedder, "trust_remote_code": self.trust, "weights_hash": self.weights_hash, "settings": asdict(settings),
                  "staging": str(staging)}
        return self._map(jobs, ChunkWorker, kwargs, self.workers, 1, 0)  # tokenizing: one CPU each, as many actors as embedders

    def embed(self, jobs: list[dict], out_dir: Path, reuse_from: tuple[Path, IndexManifest] | None) -> list[dict]:
        kwargs = {"embedder": self.embedder, "device": "cuda" if self.use_gpu else "cpu", "trust_remote_code": self.trust, "weights_hash": self.weights_hash,
                  "threads": self.cpus_per_worker, "batch_size": self.batch_size, "dim": self.dim, "out_dir": str(out_dir),
                  "reuse_from": (str(reuse_from[0]), reuse_from[1]) if reuse_from else None}
        return self._map(jobs, EmbedWorker, kwargs, self.workers, self.cpus_per_worker, 1 if self.use_gpu else 0)

    def add(self, jobs: list[tuple[str, list[str], int, str]]) -> list[int]:
        import ray

        task = ray.remote(_add_shard).options(num_cpus=self.cpus_per_worker)
        refs = []
        try:
            for j in jobs:
                refs.append(task.remote(j, self.cpus_per_worker))
            return ray.get(refs)
        except BaseException:  # a failed shard (or Ctrl-C): the others would go on holding the cluster's CPUs
            for ref in refs:
                ray.cancel(ref, force=True)
            raise

    def describe(self) -> dict:
        return {"name": self.name, "workers": self.workers, "cpus_per_worker": self.cpus_per_worker, "gpu": self.use_gpu, **self.cluster}
