"""Admission, the write side: ingest lines are validated once, here, and become events."""
from .admitter import Admitter, Summary
from .lines import parse_line

__all__ = ["Admitter", "Summary", "parse_line"]
