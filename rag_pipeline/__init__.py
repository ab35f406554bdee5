"""rag-pipeline: retrieval-augmented generation with a small RAFT-tuned generator.

Stages hand off through directories: ``build-index`` -> ``build-raft-dataset`` ->
``train-generator`` -> ``ask``/``evaluate``. Importing this package does no work.
"""

__version__ = "0.1.0"
