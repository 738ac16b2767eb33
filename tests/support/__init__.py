"""Helpers the test modules share: sample messages, node harnesses, rigs and scenes."""
