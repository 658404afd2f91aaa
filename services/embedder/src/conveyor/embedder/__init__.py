"""Conveyor's embedder stage: a document's chunks, embedded and written to a vector store."""
