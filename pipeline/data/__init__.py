"""Data on disk: array files, hashes and atomic writes (files.py); MNIST's sources (sources.py)."""
