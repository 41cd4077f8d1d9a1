"""Synthetic multi-step arithmetic word problems (prompt source for distillation / RL)."""
