"""Synthetic grounded summarization with an exact entailment oracle (``world.py``)."""
