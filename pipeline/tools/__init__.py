"""Commands around the pipeline, not stages: the UI, reproducing a run, relocating the store,
the offline plots page, moving the champion by hand, the report of a change against a base."""
