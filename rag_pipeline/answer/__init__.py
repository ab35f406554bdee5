"""Answering: the retriever chained to the generator, grounded decoding, the passages a prompt shows."""
