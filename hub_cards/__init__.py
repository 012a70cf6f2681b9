"""Model cards, export, Hub publishing and conversion of the original LLaMo release."""
