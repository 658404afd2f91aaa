"""Extractor stage: turns uploaded documents into clean text for the summarizer."""
