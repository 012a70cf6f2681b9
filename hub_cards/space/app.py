"""Hugging Face Space entry point of the LLaMo demo (`python app.py`), configured by `LLAMO_MODEL`, `LLAMO_DEVICE`,
`LLAMO_INDEX` and `LLAMO_NEIGHBOURS` (see README.md) and Gradio's own variables. Without a model, chat is off."""

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
HERE = Path(__file__).resolve().parent


def _space_module(name: str):
    """A module of this folder: from the installed `llamo` package, else this folder loaded as a package (a Space
    whose `llamo` lacks the demo modules)."""
    try:
        return importlib.import_module(f"llamo.hub_cards.space.{name}")
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("llamo.hub_cards"):
            raise
    if "llamo_space" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "llamo_space", HERE / "__init__.py", submodule_search_locations=[str(HERE)]
        )
        package = sys.modules["llamo_space"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(package)
    return importlib.import_module(f"llamo_space.{name}")


def create_demo():
    """The page, with the model loaded if one can be (otherwise chat is switched off with the reason shown)."""
    space_demo = _space_module("demo")
    choice = os.environ.get("LLAMO_MODEL")
    try:
        from huggingface_hub import snapshot_download

        from llamo.builder import load_llamo
        from llamo.default_model import resolve_model_dir

        # a Hub model id (not a local folder) is downloaded once
        folder = Path(snapshot_download(choice)) if choice and not Path(choice).is_dir() else resolve_model_dir(choice)
        model, processor = load_llamo(folder, os.environ.get("LLAMO_DEVICE", "auto"))
    except Exception as error:  # the page still draws molecules; the header says why chat is off
        print(f"[llamo demo] no model: {error}", file=sys.stderr)
        return space_demo.build_demo(unavailable=f"the model could not be loaded ({error}).")
    # the answers' in-context neighbours: `LLAMO_INDEX` / `LLAMO_NEIGHBOURS`, else the model's default indexes; a bad
    # setting turns neighbours off (the reason goes to the log) rather than the page
    space_neighbours = _space_module("neighbours")
    try:
        index, neighbours = os.environ.get("LLAMO_INDEX") or None, os.environ.get("LLAMO_NEIGHBOURS")
        retrieval = space_neighbours.Retrieval(index, folder, int(neighbours) if neighbours else None)
        retrieval.preload()
    except (OSError, ValueError) as error:
        print(f"[llamo demo] no in-context neighbours: {error}", file=sys.stderr)
        retrieval = space_neighbours.Retrieval(space_neighbours.NO_INDEX, folder)  # the model's decoding stays
    return space_demo.build_demo(model, processor, model_name=choice or folder.name, retrieval=retrieval)


demo = create_demo()

if __name__ == "__main__":
    demo.launch(css=_space_module("demo").CSS, footer_links=[])
