"""XSum news articles and one-sentence summaries from local JSON-lines files."""
