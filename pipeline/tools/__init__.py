"""Command-line tools around the pipeline (not stages): the offline plots page."""
