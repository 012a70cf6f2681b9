"""Evaluation of LLaMo on description, IUPAC naming and property QA under the field's metric protocols."""
