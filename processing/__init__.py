"""Datasets, instruction-data generation and collators for LLaMo (see the training and data issues)."""
