"""GSM8K grade-school math word problems from local JSON-lines files (prompt source)."""
