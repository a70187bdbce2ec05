"""Training data: synthetic scenes, readers for real multi-view layouts, the on-disk format and the
Grain pipeline (spec flashworld.md §7, §13; formats.md §7).

Every source becomes `Clip`s (frames on disk or in memory, 11-number cameras, an optional caption);
`build` writes them in one TFDS/array_record format, which `pipeline` alone reads.
"""
