"""rag-pipeline: retrieval-augmented generation with a small RAFT-tuned generator.

Stages hand off through directories: ``build-index`` -> ``build-raft-dataset`` ->
``train-generator`` -> ``ask``/``evaluate``; ``tune`` runs them all from a folder of documents. Every stage module has the same pair:
``run(cfg) -> result`` for library use and ``main(cfg) -> int`` for the terminal; ``cli`` is a
table from command to (module, config class). Importing this package does no work.

Commands (command: module -> what it reads and writes):

======================  ===========================  ===============================================
``build-index``         ``index.build``              documents -> index directory
``search``              ``index.search``             index + query -> top-k chunks (a look inside)
``eval-retrieval``      ``eval.retrieval``           index + QA file -> Recall@k, MRR@10, Precision@k
``build-raft-dataset``  ``data.raft``                index and/or QA files -> RAFT dataset directory
``train-generator``     ``train``                    RAFT dataset -> adapter directory (checkpoints)
``ask``                 ``answer.ask``               index + adapter -> cited answers
``evaluate``            ``eval.evaluate``            index + QA file + adapters -> report directory
``calibrate``           ``eval.calibrate``           adapter + validation questions -> its abstention threshold
``serve``               ``serve``                    index + adapter -> OpenAI-compatible server and web page
``export``              ``export``                   adapter -> merged Hugging Face folder or GGUF file
``tune``                ``tune``                     documents (+ QA file) -> index, dataset, calibrated adapter, report
======================  ===========================  ===============================================

Subpackages:

- ``index``: ``build`` (the stage), ``format`` (the directory on disk: file names, the
  ``IndexManifest`` type and its one reader, checks), ``store`` (its chunk store), ``ingest`` (files -> documents -> chunks), ``embed``
  (embedders), ``ann`` (FAISS index choice and search), ``sharded`` and ``ray_engine`` (the
  layout and engine for millions of chunks), ``retriever`` (loads an index; dense/hybrid
  search), ``search`` (the stage).
- ``data``: ``raft`` (the stage), ``questions`` (QA pairs written from chunks), ``teacher``
  (optional teacher models), ``contexts`` (QA records' own passages), ``injection``
  (prompt-injection documents), ``splits`` (the small-data split rule).
- ``answer``: ``ask`` (the stage and the ``Pipeline``), ``settings`` (``AnswerSettings``, the
  answering settings that ``ask``, ``serve``, ``evaluate`` and ``calibrate`` share and
  ``Pipeline.load`` takes), ``abstention`` (the calibrated threshold an adapter stores and the rule
  that applies it), ``check`` (the answer check), ``grounded`` (grounded decoding), ``focus``
  (the prompt's passages for ``--passages``: re-ranked chunks, sentence windows).
- ``eval``: ``evaluate``, ``retrieval`` (eval-retrieval), ``calibrate``.
- ``serve``: the server (``app``, ``batcher``, ``schema``); ``export``: the stage and ``gguf``.

Shared modules (each concern has one owner; stages call it): ``passage`` (the chunk types
``Chunk``, ``StoredChunk``, ``Hit`` and ``Passage``, and the gold/distractor rules), ``prompt``
(templates, an adapter's template, rendering, token budget), ``qa`` (the QA reader), ``support``
(whether a passage supports an answer), ``generator``
(loading a model and its tokenizer, encoding, padding, loss, batched generation), ``inference``
(a loaded generator's CPU kernels: prepacked, fused bf16 projections with bitwise the same numbers),
``batching`` (continuous batching: one decode batch that ``serve``'s answers join and leave between steps),
``adapter_meta`` (an adapter directory's ``rag_pipeline.json``: ``AdapterMeta``, its reader and
writer), ``device`` (device and dtype), ``model_paths`` (model ids -> local folders),
``metrics`` (answer scoring and SQuAD 2.0's figures) and ``textnorm`` (answer normalization),
``atomic`` (atomic files and directories, output locks), ``config`` (typed configs: defaults <
YAML < flags), ``errors`` (one-line user errors).
"""

__version__ = "0.1.0"
