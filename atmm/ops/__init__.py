"""ATMM kernel families: ``shrink`` and ``expand`` (tile and GEMV paths each); ``lora`` holds the
public ops that pick their tiling per call."""
