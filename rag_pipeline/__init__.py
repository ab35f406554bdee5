"""rag-pipeline: retrieval-augmented generation with a small RAFT-tuned generator.

Stages hand off through directories: ``build-index`` -> ``build-raft-dataset`` ->
``train-generator`` -> ``ask``/``evaluate``. Every stage module has the same pair:
``run(cfg) -> result`` for library use and ``main(cfg) -> int`` for the terminal; ``cli`` is a
table from command to (module, config class). Importing this package does no work.

Stages (command: module -> what it reads and writes):

====================  ===================  ===============================================
``build-index``       ``index``            documents -> index directory
``search``            ``search``           index + query -> top-k chunks (a look inside)
``eval-retrieval``    ``eval_retrieval``   index + QA file -> Recall@k, MRR@10, Precision@k
``build-raft-dataset`` ``raft``            index and/or QA files -> RAFT dataset directory
``train-generator``   ``train``            RAFT dataset -> adapter directory (checkpoints)
``ask``               ``ask``              index + adapter -> cited answers
``evaluate``          ``evaluate``         index + QA file + adapters -> report directory
====================  ===================  ===============================================

Shared modules (each concern has one owner; stages call it):

- ``index_format``: the index directory on disk (file names, manifest, checks); ``store``: its
  chunk store (SQLite); ``ingest``: files -> documents -> chunks; ``embed``: embedders.
- ``retriever``: loads an index, dense/hybrid search. ``passage``: the passage type and the
  gold/distractor rules. ``prompt``: templates, rendering, token budget. ``qa``: the QA reader
  (JSONL, JSON, CSV/TSV, Parquet, datasets; field names). ``support``: whether a passage
  supports a span or free-form answer. ``contexts``: QA records' own passages (indexed or
  matched). ``splits``: the small-data split rule. ``questions``: QA pairs written from chunks.
- ``generator``: loading a model, encoding, padding, loss, batched generation.
  ``device``: device and dtype choice. ``model_paths``: model ids -> local folders.
- ``teacher``: optional teacher models for RAFT; ``injection``: prompt-injection documents.
- ``metrics``, ``textnorm``: answer scoring. ``atomic``: atomic files and directories.
  ``config``: typed configs (defaults < YAML < flags). ``errors``: one-line user errors.
"""

__version__ = "0.1.0"
