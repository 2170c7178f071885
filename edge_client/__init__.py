"""The edge side: capture sources, encoding with the task's encoder adapters, CLI.

Depends on :mod:`shared` only.
"""
