"""The index: documents in, chunks, vectors and a FAISS index out, and the code that reads it."""
