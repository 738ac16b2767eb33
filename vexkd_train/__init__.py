"""Offline training, evaluation and export tools (vexkd-train)."""
