"""The LLaMo web demo (a Hugging Face Space): a molecule drawn with the motif groups the projector reads
(`molecule_view`, named by `group_names`), the motif queries' attention over them (`motif_attention`), and a chat with
the model (`chat`), with in-context neighbours from a molecule index (`neighbours`). `demo` builds the Gradio page,
`app.py` is the Space entry point, `llamo demo` runs it locally. Nothing is imported here (`llamo --help` reads these
limits)."""

MAX_NEIGHBOURS = 8
"""No answer gets more neighbours than this, whatever `--neighbours` asks (the prompt stays bounded)."""
DEFAULT_MAX_NEW_TOKENS = 256
MAX_NEW_TOKENS_CAP = 512
"""The page's initial answer length, and the most tokens any answer gets."""
