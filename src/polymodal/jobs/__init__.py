"""Batch jobs over data sets: embedding into sharded arrays, locally or on Ray (being written)."""
