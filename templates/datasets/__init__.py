"""Datasets, named as tensorflow-datasets builders."""
