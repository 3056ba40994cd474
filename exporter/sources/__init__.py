"""The databases exports read from: engines, snapshots, and the catalog of datasets."""
