"""Concept erasure: prompt pools, erasure training and export."""
