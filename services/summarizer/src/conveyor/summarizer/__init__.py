"""Summarizer stage: turns extracted text into a short summary (TextRank or an LLM)."""
