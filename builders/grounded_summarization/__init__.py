"""Synthetic grounded summarization with an exact entailment oracle (``rlds_lm.tasks.summarization``)."""
