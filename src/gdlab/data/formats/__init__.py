"""Readers for on-disk data formats, one module per format: npz (NumPy archives), npy (pairs of
.npy files, optionally memory-mapped), csv (CSV and TSV), idx (MNIST's IDX files), cifar10 (the
CIFAR-10 binary version). Each checks a file's signature before parsing it, never unpickles, writes
nothing, and reports every problem as a one-line GdlabError naming the file and the fix. They build
only on formats.common, never on each other; gdlab.data.sources tells a path's format.
"""
