"""The LLaMo web demo (a Hugging Face Space): draw a molecule with the motif groups the projector reads, show how much
the motif queries attend to each group, and chat with the model about the molecule.

The logic lives in plain modules that need no browser: `molecule_view` (parsing, groups, drawing), `group_names`
(chemical names of the groups, from SMARTS rules), `motif_attention` (the projector's attention over the groups),
`chat` (conversation building, streamed generation) and `neighbours` (in-context neighbours from a molecule index).
`demo` builds the Gradio page from them; `app.py` is the Space entry point; `llamo demo` runs it locally.
"""

MAX_NEIGHBOURS = 8
"""No answer gets more neighbours than this, whatever `--neighbours` asks (the prompt stays bounded)."""
DEFAULT_MAX_NEW_TOKENS = 256
"""The page's initial answer length."""
MAX_NEW_TOKENS_CAP = 512
"""No answer is longer than this many tokens, whatever the page asks."""
