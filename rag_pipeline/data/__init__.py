"""Training data: RAFT examples from questions and passages, and questions written from documents."""
