"""Presenting results: terminal tables and figures."""
