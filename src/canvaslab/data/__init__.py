"""Training data: datasets in every supported layout (`datasets.open_dataset`), aspect-ratio buckets and
the batch sampler (`buckets`), joint transforms (`transforms`), dataset checks and tiny synthetic datasets
(`check`, `mini`), clip folders to tables (`frames`) and random training masks (`masks`).

Imports numpy, Pillow, OpenCV and (lazily) pyarrow/datasets, never torch, so data preparation runs in
light worker processes. docs/data.md describes the layouts.
"""
