"""Commands around the pipeline, not stages: the UI, reproducing a run, relocating the store,
the offline plots page, the report of a change against a base revision."""
