"""Shipped model files and their manifest, installed as the package `edge_infer.models`."""
