"""Measuring: answer quality (evaluate), retrieval (eval-retrieval), the abstention threshold (calibrate)."""
