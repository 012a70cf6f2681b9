"""The web demo (`hub_cards/space`): drawing, motif groups, their chemical names and attention, chat state, in-context
neighbours, the page, `llamo demo`.

The fast tests call the demo's plain functions with the tiny model; `test_demo_in_headless_chromium` (about 20 s, in
the default run) serves the page and drives it in Debian's chromium. It is skipped when chromium, gradio or playwright
is missing, unless `LLAMO_BROWSER_TESTS=1` asks for it (CI does): then it fails. Its screenshots go to the test's
temporary folder, and also to `LLAMO_TEST_ARTIFACTS` when that names a folder.
"""

from __future__ import annotations

import argparse
import ast
import collections
import importlib.util
import itertools
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from rdkit import Chem

from llamo import add_neighbours, pipeline_llamo
from llamo.chat_template_llamo import DEFAULT_NEIGHBOURS, NEIGHBOURS_INTRO, NEIGHBOURS_QUERY
from llamo.featurization_llamo import functional_groups
from llamo.hub_cards.space import chat, group_names, molecule_view, motif_attention, neighbours
from llamo.hub_cards.space.chat import conversation_messages, exchanges, generation_settings, stream_answer
from llamo.hub_cards.space.demo import Demo, render_molecule
from llamo.hub_cards.space.molecule_view import draw_molecule_svg, groups_table_html, load_molecule
from llamo.hub_cards.space.neighbours import Retrieval
from llamo.processing import group_rules
from llamo.processing.index import MoleculeIndex
from llamo.processing.schema import make_record

from .conftest import SMILES, free_port, subprocess_env

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "hub_cards" / "space"
CHROMIUM = Path("/usr/bin/chromium")
TESTOSTERONE = "C[C@]12CC[C@H]3[C@@H](CCC4=CC(=O)CC[C@]34C)[C@@H]1CC[C@@H]2O"
SODIUM_ACETATE = "CC(=O)[O-].[Na+]"


def _fills(svg: str) -> list[tuple[int, int, int]]:
    return [tuple(int(code[i : i + 2], 16) for i in (0, 2, 4)) for code in re.findall(r"fill:#([0-9A-Fa-f]{6})", svg)]


def _has_color(svg: str, color: tuple[float, float, float]) -> bool:
    target = [channel * 255 for channel in color]
    return any(max(abs(a - b) for a, b in zip(fill, target, strict=True)) <= 1.5 for fill in _fills(svg))


# Motif attention


@pytest.mark.parametrize("name", ["aspirin", "caffeine", "glucose", "salt"])
def test_motif_attention_is_a_distribution_over_the_groups(tiny_llamo, name):
    model, processor = tiny_llamo
    smiles = SMILES[name]
    attention = motif_attention.motif_attention(model, processor, smiles)
    groups = functional_groups(Chem.MolFromSmiles(smiles))
    queries = model.config.projector_config.num_motif_queries
    assert attention.per_query.shape == (queries, len(groups))
    assert attention.mean.shape == (len(groups),)
    np.testing.assert_allclose(attention.per_query.sum(axis=1), 1.0, atol=1e-5)
    assert attention.mean.sum() == pytest.approx(1.0, abs=1e-5)
    assert (attention.mean >= 0).all()


def test_motif_attention_matches_the_processor_batch(tiny_llamo):
    """Same weights as the projector computes from the processor's own graph tensors (same group order)."""
    model, processor = tiny_llamo
    batch = processor(text=["<graph> Describe it."], smiles=[SMILES["caffeine"]])
    with torch.inference_mode():
        _, weights = model.model.graph_projector.motif_tokens(
            batch["motif_features"][:, 0], batch["motif_mask"][:, 0], output_attentions=True
        )  # the first (only) molecule slot of the sequence
    attention = motif_attention.motif_attention(model, processor, Chem.MolFromSmiles(SMILES["caffeine"]))
    np.testing.assert_allclose(attention.per_query, weights[0].numpy(), atol=1e-6)


def test_motif_attention_absent_for_methane_and_motif_free_models(tiny_llamo):
    model, processor = tiny_llamo
    assert motif_attention.motif_attention(model, processor, SMILES["methane"]) is None
    no_motifs = SimpleNamespace(model=SimpleNamespace(graph_projector=SimpleNamespace(use_motifs=False)))
    assert motif_attention.motif_attention(no_motifs, processor, SMILES["aspirin"]) is None
    panels = render_molecule(SMILES["methane"], model, processor)
    assert panels.smiles == "C" and "<svg" in panels.drawing
    assert "No functional groups" in panels.groups and "0 functional groups" in panels.status


def test_render_molecule_lists_attention_per_group(tiny_llamo):
    model, processor = tiny_llamo
    panels = render_molecule(SMILES["aspirin"], model, processor)
    attention = motif_attention.motif_attention(model, processor, SMILES["aspirin"])
    assert "Motif attention" in panels.groups
    for weight in attention.mean:
        assert f"{weight:.3f}" in panels.groups
    assert "averaged over 4 motif queries" in panels.status
    plain = render_molecule(SMILES["aspirin"], model, processor, shade_by_attention=False)
    assert plain.groups == panels.groups and plain.drawing != panels.drawing


# Drawing and group listing


def test_aspirin_groups_are_listed_in_motif_order():
    view = load_molecule(SMILES["aspirin"])
    assert view.ok and view.num_atoms == 13
    assert [group.atoms for group in view.groups] == [(0, 1, 2, 3, 4), (9, 10, 11, 12), (4, 5, 6, 7, 8, 9)]
    assert [group.index for group in view.groups] == [0, 1, 2]
    assert view.groups[0].description == "C3O2; 3 single, 1 double bonds"
    assert view.groups[2].description == "C6; 6 aromatic bonds; aromatic ring system"
    assert len({group.color for group in view.groups}) == 3
    table = groups_table_html(view.groups)
    assert table.count("<tr>") == 1 + 3 and "0, 1, 2, 3, 4" in table and "Motif attention" not in table


def test_salt_steroid_and_sugar_descriptions():
    salt = load_molecule(SODIUM_ACETATE)
    assert [group.description for group in salt.groups] == [
        "C2O2 (charge -1); 2 single, 1 double bonds",
        "Na (charge +1); a single atom",
    ]
    steroid = load_molecule(TESTOSTERONE)
    assert sum("ring system" in group.description for group in steroid.groups) == 4
    sugar = load_molecule(SMILES["glucose"])
    assert "C5O; 6 single bonds; ring system" in [group.description for group in sugar.groups]


def test_aspirin_drawing_highlights_each_group_in_its_color():
    view = load_molecule(SMILES["aspirin"])
    svg = draw_molecule_svg(view.mol, view.groups)
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    for group in view.groups:
        assert _has_color(svg, group.color)
    assert svg.count("class='note'") >= view.num_atoms  # atom indices, as in the group listing
    plain = draw_molecule_svg(view.mol)
    assert not any(_has_color(plain, group.color) for group in view.groups)


def test_attention_shading_fades_the_least_attended_group():
    view = load_molecule(SMILES["aspirin"])
    weights = [0.1, 0.6, 0.3]
    colors = molecule_view.highlight_colors(view.groups, weights)
    assert colors[1] == view.groups[1].color
    assert all(faded >= full for faded, full in zip(colors[0], view.groups[0].color, strict=True))
    svg = draw_molecule_svg(view.mol, view.groups, weights)
    assert _has_color(svg, colors[0]) and not _has_color(svg, view.groups[0].color)


def test_group_palette_is_distinct_beyond_the_fixed_colors():
    colors = molecule_view.group_palette(40)
    assert len(colors) == len(set(colors)) == 40


# Chemical names of the groups


def _names(smiles: str) -> list[tuple[str, ...]]:
    return [group.names for group in load_molecule(smiles).groups]


def test_every_naming_rule_compiles():
    assert len(group_rules.compiled_rules()) == len(group_rules.RULES)


def test_aspirin_groups_are_an_ester_an_acid_and_a_benzene_ring():
    assert _names(SMILES["aspirin"]) == [("ester",), ("carboxylic acid",), ("benzene ring",)]
    table = groups_table_html(load_molecule(SMILES["aspirin"]).groups)
    assert "Chemical group" in table and "carboxylic acid" in table
    assert "C3O2; 3 single, 1 double bonds" in table  # the formula-like description stays beside the name


def test_caffeine_groups_are_amides_and_heteroaromatic_rings():
    view = load_molecule(SMILES["caffeine"])
    names = {name for group in view.groups for name in group.names}
    assert names == {"amide", "heteroaromatic ring"}
    # a ring carbonyl is its own group of two atoms (C=O): two of the amide's three atoms name it, the ring
    # system does not take the names of what hangs off it
    assert [group.names for group in view.groups if group.atoms in {(6, 7), (9, 10)}] == [("amide",), ("amide",)]
    assert all(group.names == ("heteroaromatic ring",) for group in view.groups if len(group.atoms) >= 5)


def test_ethanol_is_an_alcohol_and_methane_has_no_named_group():
    view = load_molecule("CCO")
    assert {group.atoms: group.names for group in view.groups} == {(1, 2): ("alcohol",), (0, 1): ()}
    assert load_molecule("C").groups == [] and group_names.group_names(Chem.MolFromSmiles("C"), []) == []
    assert "&ndash;" in groups_table_html(view.groups)  # the unnamed C-C group


@pytest.mark.parametrize(
    ("smiles", "expected"),
    [
        ("CCN", {"primary amine"}),
        ("CNC", {"secondary amine"}),
        ("CN(C)C", {"tertiary amine"}),
        ("CC(=O)N", {"amide"}),
        ("CNC(=O)NC", {"urea"}),
        ("CC#N", {"nitrile"}),
        ("C[N+](=O)[O-]", {"nitro"}),
        ("CCCl", {"halide"}),
        ("CCS", {"thiol"}),
        ("CSC", {"thioether"}),
        ("CS(=O)(=O)N", {"sulfonamide"}),
        ("CS(=O)(=O)O", {"sulfonic acid"}),
        ("OP(=O)(O)O", {"phosphate"}),
        ("CC=O", {"aldehyde"}),
        ("CC(=O)C", {"ketone"}),
        ("O=C1CCCC1", {"ketone"}),
        ("CCOCC", {"ether"}),
        ("c1ccccc1O", {"phenol", "benzene ring"}),
        ("C=CC#C", {"alkene", "alkyne"}),
        ("c1ccncc1", {"heteroaromatic ring"}),
        ("c1ccc2[nH]ccc2c1", {"benzene ring", "heteroaromatic ring"}),
        ("CC(=O)[O-].[Na+]", {"carboxylate", "metal ion"}),
        ("[Na+].[Cl-]", {"metal ion", "halide ion"}),
        ("O=C1CCCO1", {"lactone"}),
        ("CC1OC1C", {"epoxide"}),
        ("CSSC", {"disulfide"}),
        ("CC(=O)SC", {"thioester"}),
        ("COC(=O)OC", {"carbonate"}),
        (SMILES["glucose"], {"alcohol", "ether"}),
    ],
)
def test_groups_are_named_by_their_chemistry(smiles, expected):
    assert {name for names in _names(smiles) for name in names} == expected


def test_a_general_name_gives_way_to_a_specific_one():
    """An ester is not also a carbonyl or an ether, an acid not a hydroxyl, a benzene ring not 'aromatic ring'."""
    for smiles in (SMILES["aspirin"], "CC(=O)C", "c1ccccc1O", "CNC(=O)NC"):
        names = {name for group in _names(smiles) for name in group}
        assert not names & {"carbonyl", "hydroxyl", "aromatic ring", "amide" if "urea" in names else "-"}
    assert _names("CCOC(=O)C")[0] == ("ester",)


def test_naming_a_large_molecule_is_bounded():
    smiles = "OC(=O)" + "CC(O)C(=O)N" * 40  # 443 atoms
    mol = Chem.MolFromSmiles(smiles)
    start = time.perf_counter()
    names = group_names.group_names(mol, functional_groups(mol))
    assert time.perf_counter() - start < 5
    assert names[0] == ("carboxylic acid",) and sum(group == ("amide",) for group in names) == 40


# Bad and large molecules


@pytest.mark.parametrize("smiles", ["C1CC", "not a molecule", "", "   ", "C(C"])
def test_invalid_smiles_gives_a_message(tiny_llamo, smiles):
    model, processor = tiny_llamo
    panels = render_molecule(smiles, model, processor)
    assert panels.smiles is None and panels.drawing == "" and panels.groups == ""
    assert "llamo-error" in panels.status and "SMILES" in panels.status


def test_overlong_input_is_refused_before_parsing():
    view = load_molecule("C" * (molecule_view.MAX_SMILES_CHARS + 1))
    assert not view.ok and "characters" in view.error


def test_molecule_over_max_atoms_is_refused(tiny_llamo):
    model, processor = tiny_llamo
    panels = render_molecule("C" * (processor.max_atoms + 1), model, processor)
    assert panels.smiles is None and panels.drawing == ""
    assert f"{processor.max_atoms + 1} atoms" in panels.status and str(processor.max_atoms) in panels.status


def test_large_molecule_is_drawn_without_highlights_quickly(tiny_llamo):
    model, processor = tiny_llamo
    smiles = "OC(=O)" + "CC(O)C(=O)N" * 40  # 443 atoms: under max_atoms, over HIGHLIGHT_MAX_ATOMS
    start = time.perf_counter()
    panels = render_molecule(smiles, model, processor)
    assert time.perf_counter() - start < 20
    assert panels.smiles == smiles and "<svg" in panels.drawing
    assert "groups not highlighted" in panels.drawing
    view = load_molecule(smiles)
    assert not any(_has_color(panels.drawing, group.color) for group in view.groups[:5])


# Chat state


def _history(*turns: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(turns)]


def test_conversation_puts_the_molecule_in_the_first_user_turn_only():
    history = _history("Describe this molecule.", "An ester.", "Its IUPAC name?", "2-acetyloxybenzoic acid")
    messages = conversation_messages(SMILES["aspirin"], history, "And its mass?")
    assert [message["role"] for message in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"] == [
        {"type": "molecule", "smiles": SMILES["aspirin"]},
        {"type": "text", "text": "Describe this molecule."},
    ]
    assert messages[1:] == [
        {"role": "assistant", "content": "An ester."},
        {"role": "user", "content": "Its IUPAC name?"},
        {"role": "assistant", "content": "2-acetyloxybenzoic acid"},
        {"role": "user", "content": "And its mass?"},
    ]
    first = conversation_messages("C", [], "Hi")
    assert first == [{"role": "user", "content": [{"type": "molecule", "smiles": "C"}, {"type": "text", "text": "Hi"}]}]


def test_conversation_reads_gradio_content_blocks_and_drops_old_turns():
    history = [
        {"role": "user", "content": [{"type": "text", "text": f"q{i}"}]}
        if i % 2 == 0
        else {"role": "assistant", "content": [{"type": "text", "text": f"a{i}"}]}
        for i in range(6)
    ]
    history.append({"role": "user", "content": "unanswered"})
    assert exchanges(history) == [("q0", "a1"), ("q2", "a3"), ("q4", "a5")]
    messages = conversation_messages("CCO", history, "next", max_exchanges=2)
    assert messages[0]["content"][0] == {"type": "molecule", "smiles": "CCO"}
    assert messages[0]["content"][1]["text"] == "q2"
    assert [chat.content_text(message["content"]) for message in messages[1:]] == ["a3", "q4", "a5", "next"]


def test_multi_turn_prompt_holds_one_graph(tiny_llamo):
    _, processor = tiny_llamo
    messages = conversation_messages(SMILES["aspirin"], _history("Describe it.", "An ester."), "More?")
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.count(processor.graph_token) == 1
    assert prompt.index(processor.graph_token) < prompt.index("Describe it.") < prompt.index("An ester.")
    assert prompt.index("An ester.") < prompt.index("More?")


def test_generation_settings_are_capped():
    assert generation_settings(10**6)["max_new_tokens"] == chat.MAX_NEW_TOKENS_CAP
    assert generation_settings(0)["max_new_tokens"] == 1
    assert "temperature" not in generation_settings(64)
    assert generation_settings(64, do_sample=True, temperature=0.5)["temperature"] == 0.5


def test_streamed_answer_matches_generate(tiny_llamo):
    model, processor = tiny_llamo
    messages = conversation_messages(SMILES["aspirin"], [], "Describe this molecule.")
    settings = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False}
    pieces = list(stream_answer(model, processor, messages, settings))
    assert len(pieces) >= 2 and all(later.startswith(earlier) for earlier, later in itertools.pairwise(pieces))
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    with torch.inference_mode():
        output = model.generate(**inputs, **settings)
    expected = processor.batch_decode(output, prompt_length=inputs["input_ids"].shape[1])[0]
    assert pieces[-1].strip() == expected


def test_a_model_that_decodes_with_beams_still_streams(tiny_llamo):
    model, processor = tiny_llamo
    messages = conversation_messages(SMILES["aspirin"], [], "Describe this molecule.")
    settings = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
    beams = model.generation_config.num_beams
    model.generation_config.num_beams = 3
    try:
        pieces = list(stream_answer(model, processor, messages, settings))
    finally:
        model.generation_config.num_beams = beams
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    with torch.inference_mode():
        greedy = model.generate(**inputs, **settings, num_beams=1)
    assert pieces[-1].strip() == processor.batch_decode(greedy, prompt_length=inputs["input_ids"].shape[1])[0]


def test_beam_search_answers_come_whole_as_generate_gives_them(tiny_llamo):
    model, processor = tiny_llamo
    messages = conversation_messages(SMILES["aspirin"], [], "Describe this molecule.")
    settings = {"max_new_tokens": 8, "do_sample": False, "num_beams": 3}
    stats = {}
    pieces = list(stream_answer(model, processor, messages, settings, stats=stats))
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    with torch.inference_mode():
        beams = model.generate(**inputs, **settings)
    length = inputs["input_ids"].shape[1]
    assert pieces == [processor.batch_decode(beams, prompt_length=length)[0]]
    assert stats == {"new_tokens": beams.shape[1] - length}
    stop = threading.Event()
    stop.set()  # Stop works for beam search too: generation ends at its next token
    long = {"max_new_tokens": 300, "min_new_tokens": 300, "num_beams": 3}
    list(stream_answer(model, processor, messages, long, stop, stats=stats))
    assert stats["new_tokens"] <= 2


def test_a_streamed_answer_the_loop_guard_ended_comes_again_without_its_repeated_start(tiny_llamo, monkeypatch):
    model, processor = tiny_llamo
    kept: list[list[int]] = []

    def dropping(config, ids):  # stands for the rule firing: the pipeline's own test covers the rule itself
        assert config is model.generation_config
        kept.append(ids[:-2])
        return kept[-1]

    monkeypatch.setattr(pipeline_llamo, "answer_token_ids", dropping)
    messages = conversation_messages(SMILES["aspirin"], [], "Describe this molecule.")
    pieces = list(stream_answer(model, processor, messages, {"max_new_tokens": 6, "min_new_tokens": 6}))
    shortened = processor.decode(kept[0], skip_special_tokens=True).strip()
    assert len(pieces) >= 2 and pieces[-1] == shortened != pieces[-2]


def test_the_demo_decodes_each_question_as_the_model_says(tiny_llamo, tmp_path, monkeypatch):
    from llamo import retrieval as llamo_retrieval
    from llamo.hub_cards.space import demo as space_demo

    (tmp_path / llamo_retrieval.RETRIEVAL_FILE).write_text(
        json.dumps({"task_generation": {"description": {"num_beams": 3}}}), encoding="utf-8"
    )
    model, processor = tiny_llamo
    used: list[dict] = []
    real_stream = space_demo.stream_answer

    def recording_stream(model, processor, messages, settings, *args, **kwargs):
        used.append(settings)
        return real_stream(model, processor, messages, settings, *args, **kwargs)

    monkeypatch.setattr(space_demo, "stream_answer", recording_stream)
    demo = Demo(model, processor, retrieval=Retrieval(neighbours.NO_INDEX, tmp_path))
    steps = list(demo.respond("Describe this molecule.", [], "CCCCO", max_new_tokens=4))
    assert "beam search" in steps[0][2] and steps[-1][0][-1]["content"]
    list(demo.respond(NAME_QUESTION, [], "CCCCO", max_new_tokens=4))
    list(demo.respond("Describe this molecule.", [], "CCCCO", max_new_tokens=4, do_sample=True))
    assert [settings.get("num_beams", 1) for settings in used] == [3, 1, 1]


def test_stop_ends_the_answer_at_the_next_token(tiny_llamo):
    model, processor = tiny_llamo
    messages = conversation_messages(SMILES["caffeine"], [], "Describe this molecule.")
    stop = threading.Event()
    settings = {"max_new_tokens": 200, "min_new_tokens": 200, "do_sample": False}
    pieces, stats = [], {}
    for piece in stream_answer(model, processor, messages, settings, stop, stats=stats):
        pieces.append(piece)
        stop.set()
    # Pieces already queued before the stop are still delivered (more of them on a busy machine), but generation
    # itself ends at its next token instead of running to 200.
    assert stop.is_set() and len(pieces) <= 10 and stats["new_tokens"] <= 20
    full = list(stream_answer(model, processor, messages, {"max_new_tokens": 40, "min_new_tokens": 40}))
    assert len(full[-1]) > len(pieces[-1])


def test_closing_the_stream_stops_generation(tiny_llamo):
    model, processor = tiny_llamo
    messages = conversation_messages(SMILES["glucose"], [], "Describe this molecule.")
    stream = stream_answer(model, processor, messages, {"max_new_tokens": 500, "min_new_tokens": 500})
    next(stream)
    start = time.perf_counter()
    stream.close()  # joins the generation thread, which stops at its next token
    assert time.perf_counter() - start < 5
    assert not any(thread.name == "llamo-demo-generate" for thread in threading.enumerate())


def test_stats_count_the_new_tokens(tiny_llamo):
    model, processor = tiny_llamo
    messages = conversation_messages(SMILES["aspirin"], [], "Describe this molecule.")
    stats = {}
    list(stream_answer(model, processor, messages, {"max_new_tokens": 7, "min_new_tokens": 7}, stats=stats))
    assert stats == {"new_tokens": 7}


def test_generation_failure_is_raised_not_hung(tiny_llamo):
    model, processor = tiny_llamo
    messages = conversation_messages(SMILES["aspirin"], [], "Describe this molecule.")
    with pytest.raises(ValueError):
        list(stream_answer(model, processor, messages, {"max_new_tokens": 4, "num_return_sequences": 2}))
    too_long = conversation_messages(SMILES["aspirin"], [], "Describe this molecule. " * 1000)
    with pytest.raises(ValueError, match="over the model's context of 2048 tokens"):
        next(stream_answer(model, processor, too_long, {"max_new_tokens": 4}))


def test_a_failed_generation_leaves_the_conversation_as_it_was(tiny_llamo):
    model, processor = tiny_llamo
    demo = Demo(model, processor)
    history = list(demo.respond("Describe this molecule.", [], SMILES["aspirin"], max_new_tokens=3))[-1][0]
    assert [turn["role"] for turn in history] == ["user", "assistant"]
    too_long = "Describe this molecule. " * 1000  # past the tiny Llama's 2048 positions
    steps = list(demo.respond(too_long, history, SMILES["aspirin"], max_new_tokens=3))
    after, box, status, _ = steps[-1]
    assert after == history and box == too_long.strip() and "context of 2048 tokens: shorten it" in status
    assert len(list(demo.respond("And its charge?", after, SMILES["aspirin"], max_new_tokens=3))[-1][0]) == 4


def test_demo_conversation_flow(tiny_llamo):
    model, processor = tiny_llamo
    demo = Demo(model, processor)
    drawing, _, _, smiles, history, chat_status, neighbours = demo.show(SMILES["aspirin"], True)
    assert smiles == SMILES["aspirin"] and history == [] and chat_status == "" and "<svg" in drawing
    assert neighbours == ""
    steps = list(demo.respond("Describe this molecule.", history, smiles, max_new_tokens=8))
    assert steps[0][0][-2:] == [
        {"role": "user", "content": "Describe this molecule."},
        {"role": "assistant", "content": ""},
    ]
    history, question_box, final_status, panel = steps[-1]
    assert question_box == "" and len(history) == 2 and history[1]["content"] and panel == ""  # no index: no panel
    assert "limit of 8 new tokens" in final_status  # the random tiny model never stops by itself
    history, _, _, _ = list(demo.respond("And its name?", history, smiles, max_new_tokens=8))[-1]
    assert [message["role"] for message in history] == ["user", "assistant", "user", "assistant"]
    # a new molecule starts a new conversation
    assert demo.show(SMILES["caffeine"], True)[4] == []


def test_demo_chat_explains_what_is_missing(tiny_llamo):
    model, processor = tiny_llamo
    history, question, status, _ = list(Demo(model, processor).respond("Hi?", [], None))[-1]
    assert history == [] and question == "Hi?" and "valid molecule" in status
    history, _, status, _ = list(Demo(unavailable="No bundled default model.").respond("Hi?", [], "CCO"))[-1]
    assert history == [] and "No bundled default model." in status
    assert list(Demo(model, processor).respond("   ", [], "CCO"))[-1] == ([], "", "", "")


def test_demo_stop_button_marks_the_answer_stopped(tiny_llamo):
    model, processor = tiny_llamo
    demo = Demo(model, processor)
    steps = demo.respond("Describe this molecule.", [], SMILES["aspirin"], max_new_tokens=512, session="s1")
    next(steps)
    next(steps)
    demo.stop("s1")
    history, _, status, _ = list(steps)[-1]
    assert "Stopped." in status and history[-1]["role"] == "assistant"


def test_new_molecule_during_an_answer_ends_it_with_an_empty_conversation(tiny_llamo):
    model, processor = tiny_llamo
    demo = Demo(model, processor)
    steps = demo.respond("Describe this molecule.", [], SMILES["aspirin"], max_new_tokens=512, session="s2")
    next(steps)
    assert next(steps)[0][-1]["content"]
    assert demo.show(SMILES["caffeine"], True, session="s2")[4] == []
    assert list(steps) == [([], "", "", "")]
    assert (
        list(demo.respond("Hi?", [], SMILES["caffeine"], max_new_tokens=2, session="s2"))[-1][0][0]["content"] == "Hi?"
    )


# In-context neighbours

LONG_ANSWER = "benzoic acid " + "with a long description " * 40
INDEX_NAMES = {
    SMILES["aspirin"]: "2-acetyloxybenzoic acid",
    "OC(=O)c1ccccc1O": "2-hydroxybenzoic acid",
    "OC(=O)c1ccccc1": LONG_ANSWER,
    "CCO": "ethanol",
    "CCCO": "propan-1-ol",
    "CC(=O)O": "acetic acid",
}
NAME_QUESTION = "What is its IUPAC name?"


@pytest.fixture(scope="module")
def name_index() -> MoleculeIndex:
    """A tiny naming index (the records of tests/test_index.py's `name_records`), aspirin included."""
    records = [
        make_record(
            f"t:{i}",
            smiles,
            [{"role": "user", "content": NAME_QUESTION}, {"role": "assistant", "content": name}],
            "iupac",
            "t",
        )
        for i, (smiles, name) in enumerate(INDEX_NAMES.items())
    ]
    index, counts = MoleculeIndex.from_records(records, "iupac", progress=False)
    assert counts["indexed"] == len(INDEX_NAMES)
    return index


def _cards(panel: str) -> int:
    return panel.count('class="llamo-neighbour"')


def test_neighbours_panel_lists_the_nearest_molecules(tiny_llamo, name_index):
    model, processor = tiny_llamo
    demo = Demo(model, processor, retrieval=Retrieval(name_index, neighbours=3))
    steps = list(demo.respond(NAME_QUESTION, [], SMILES["aspirin"], max_new_tokens=4))
    assert steps[0][3] == "" and all(step[3] == steps[-1][3] for step in steps[1:])  # shown while streaming
    history, _, status, panel = steps[-1]
    assert history[-1]["content"] and "failed" not in status
    expected = name_index.neighbours(SMILES["aspirin"], k=3, question=NAME_QUESTION)
    assert _cards(panel) == 3 and panel.count("<svg") == 3
    positions = [panel.index(f"<code>{n.smiles}</code>") for n in expected]
    assert positions == sorted(positions)  # most similar first
    for neighbour in expected:
        assert f"Tanimoto similarity {neighbour.similarity:.2f}" in panel
    assert expected[0].exact and "2-acetyloxybenzoic acid" in panel
    assert "The query molecule itself is in the index" in panel and panel.count("the query molecule itself") == 1
    assert "the given index" in panel


def test_neighbours_panel_without_the_query_in_the_index(tiny_llamo, name_index):
    model, processor = tiny_llamo
    demo = Demo(model, processor, retrieval=Retrieval(name_index))
    panel = list(demo.respond(NAME_QUESTION, [], "CCCCO", max_new_tokens=2))[-1][3]
    assert _cards(panel) == DEFAULT_NEIGHBOURS
    assert "itself" not in panel and "<code>CCCO</code>" in panel


def test_prompt_holds_the_neighbours_in_the_pipelines_format(tiny_llamo, name_index, monkeypatch):
    from llamo.hub_cards.space import demo as space_demo

    model, processor = tiny_llamo
    sent: list[list[dict]] = []
    real_stream = space_demo.stream_answer

    def recording_stream(model, processor, messages, *args, **kwargs):
        sent.append(messages)
        return real_stream(model, processor, messages, *args, **kwargs)

    monkeypatch.setattr(space_demo, "stream_answer", recording_stream)
    demo = Demo(model, processor, retrieval=Retrieval(name_index, neighbours=2))
    history = list(demo.respond(NAME_QUESTION, [], SMILES["aspirin"], max_new_tokens=3))[-1][0]
    found = name_index.neighbours(SMILES["aspirin"], k=2, question=NAME_QUESTION)
    context = [{"smiles": n.smiles, "answer": n.answer} for n in found]
    assert sent[0] == add_neighbours(conversation_messages(SMILES["aspirin"], [], NAME_QUESTION), context)
    prompt = processor.apply_chat_template(sent[0], add_generation_prompt=True)
    assert prompt.count(processor.graph_token) == 3  # two neighbours and the query
    assert prompt.index(NEIGHBOURS_INTRO) < prompt.index("2-acetyloxybenzoic acid") < prompt.index(NEIGHBOURS_QUERY)
    assert prompt.index(NEIGHBOURS_QUERY) < prompt.index(NAME_QUESTION)

    list(demo.respond("And its formula?", history, SMILES["aspirin"], max_new_tokens=3))  # a follow-up
    assert sent[1][0] == sent[0][0] and sent[1][1:3] == [history[1], {"role": "user", "content": "And its formula?"}]
    inputs = processor.apply_chat_template(sent[1], add_generation_prompt=True, tokenize=True, return_dict=True)
    assert inputs["input_ids"].shape[1] > len(processor.tokenizer(NEIGHBOURS_INTRO)["input_ids"])


def test_long_answers_are_cut_on_the_page_not_in_the_prompt(tiny_llamo, name_index):
    model, processor = tiny_llamo
    demo = Demo(model, processor, retrieval=Retrieval(name_index, neighbours=1))
    messages, panel, _ = demo.in_context(
        conversation_messages("OC(=O)c1ccccc1", [], NAME_QUESTION), "OC(=O)c1ccccc1", ""
    )
    shown = re.search(r'<div class="llamo-answer">(.*?)</div>', panel).group(1)
    assert len(shown) <= neighbours.SHOWN_ANSWER_CHARS and shown.endswith("\u2026")
    assert " ".join(LONG_ANSWER.split()) in chat.content_text(messages[0]["content"])


def test_no_index_no_panel_and_an_unchanged_prompt(tiny_llamo, name_index, tmp_path):
    model, processor = tiny_llamo
    messages = conversation_messages(SMILES["aspirin"], [], NAME_QUESTION)
    for retrieval in (None, Retrieval("none"), Retrieval(name_index, neighbours=0), Retrieval(None, tmp_path)):
        demo = Demo(model, processor, retrieval=retrieval)
        assert demo.in_context(messages, SMILES["aspirin"], NAME_QUESTION) == (messages, "", [])
        assert list(demo.respond(NAME_QUESTION, [], SMILES["aspirin"], max_new_tokens=2))[-1][3] == ""


def test_the_models_default_index_serves_its_task_only(tiny_llamo, name_index, tmp_path, monkeypatch):
    from llamo import retrieval as llamo_retrieval

    built = []

    def default_index(task, **kwargs):
        built.append(task)
        return name_index

    monkeypatch.setattr(llamo_retrieval, "default_index", default_index)
    (tmp_path / llamo_retrieval.RETRIEVAL_FILE).write_text(
        json.dumps({"neighbours": 1, "default_indexes": {"iupac": "chemicals"}}), encoding="utf-8"
    )
    model, processor = tiny_llamo
    retrieval = Retrieval(None, tmp_path)
    demo = Demo(model, processor, retrieval=retrieval)
    assert retrieval.needs_loading(NAME_QUESTION) and not retrieval.needs_loading("Describe this molecule.")
    steps = list(demo.respond(NAME_QUESTION, [], "CCCCO", max_new_tokens=2))
    assert "Loading the molecule index" in steps[0][2]
    assert _cards(steps[-1][3]) == 1 and "default iupac index" in steps[-1][3]
    assert not retrieval.needs_loading(NAME_QUESTION)
    assert list(demo.respond("Describe this molecule.", [], "CCCCO", max_new_tokens=2))[-1][3] == ""
    list(demo.respond("What is it called?", [], "CCO", max_new_tokens=2))
    assert built == ["iupac"]  # built (here: handed over) once, then reused


def test_descriptions_without_neighbours_get_the_rule_based_name(tiny_llamo, name_index, tmp_path, monkeypatch):
    from llamo import retrieval as llamo_retrieval
    from llamo.pipeline_llamo import inchikey

    monkeypatch.setattr(llamo_retrieval, "rule_namer", lambda **_: lambda smiles: "butan-1-ol")
    monkeypatch.setattr(llamo_retrieval, "opsin_checker", lambda: lambda names: [inchikey("CCCCO")] * len(names))
    (tmp_path / llamo_retrieval.RETRIEVAL_FILE).write_text(json.dumps({"name_hint_tasks": ["description"]}))
    model, processor = tiny_llamo
    describe = "Describe this molecule."
    messages = conversation_messages("CCCCO", [], describe)
    demo = Demo(model, processor, retrieval=Retrieval(None, tmp_path))
    hinted, panel, _ = demo.in_context(messages, "CCCCO", describe)
    assert hinted[-1]["content"][-1]["text"] == "Its IUPAC name is butan-1-ol. Describe this molecule."
    assert "Given with the question: its IUPAC name, butan-1-ol." in panel
    demo = Demo(model, processor, retrieval=Retrieval(None, tmp_path))
    assert demo.in_context(conversation_messages("CCCCO", [], NAME_QUESTION), "CCCCO", NAME_QUESTION)[1] == ""
    off = Demo(model, processor, retrieval=Retrieval(None, tmp_path, name_hints=False))
    assert off.in_context(messages, "CCCCO", describe) == (messages, "", [])
    with_index = Demo(model, processor, retrieval=Retrieval(name_index, tmp_path, neighbours=1))
    shown, panel, _ = with_index.in_context(messages, "CCCCO", describe)
    assert shown[-1]["content"][-1]["text"] == "Its IUPAC name is butan-1-ol. Describe this molecule."
    assert _cards(panel) == 1 and "its IUPAC name, butan-1-ol" in panel  # the neighbours and the name
    assert "butan-1-ol" in list(demo.respond(describe, [], "CCCCO", max_new_tokens=2))[-1][3]


def test_names_are_verified_as_llamo_generate_verifies_them(tiny_llamo, tmp_path, monkeypatch):
    from llamo import retrieval as llamo_retrieval
    from llamo.pipeline_llamo import inchikey

    def checker(names):
        return [inchikey("CCCCO") if name == "butan-1-ol" else None for name in names]

    monkeypatch.setattr(llamo_retrieval, "rule_namer", lambda **_: lambda smiles: "butan-1-ol")
    monkeypatch.setattr(llamo_retrieval, "opsin_checker", lambda: checker)
    model, processor = tiny_llamo
    demo = Demo(model, processor, retrieval=Retrieval(neighbours.NO_INDEX, tmp_path))
    steps = list(demo.respond(NAME_QUESTION, [], "CCCCO", max_new_tokens=4))
    assert "beam search" in steps[0][2]
    assert steps[-1][0][-1]["content"] == "butan-1-ol" and "Verified" in steps[-1][2] and "namer" in steps[-1][2]
    unverified = list(demo.respond(NAME_QUESTION, [], "CCCO", max_new_tokens=4))[-1]
    assert unverified[0][-1]["content"] != "butan-1-ol" and "Not verified" in unverified[2]
    assert demo.retrieval.verification("Describe this molecule.") == {}
    off = Demo(model, processor, retrieval=Retrieval(neighbours.NO_INDEX, tmp_path, name_hints=False))
    assert "erified" not in list(off.respond(NAME_QUESTION, [], "CCCCO", max_new_tokens=4))[-1][2]


def test_neighbours_are_capped_and_must_fit_the_processor(name_index):
    retrieval = Retrieval(name_index, neighbours=100)
    assert retrieval.index_for(NAME_QUESTION) == (name_index, neighbours.MAX_NEIGHBOURS)
    mol = Chem.MolFromSmiles(SMILES["aspirin"])
    small = retrieval.find(mol, NAME_QUESTION, max_atoms=4)  # ethanol, propanol and acetic acid only
    assert sorted(n.smiles for n in small.neighbours) == ["CC(=O)O", "CCCO", "CCO"]


def test_a_near_twin_is_given_alone_as_in_llamo_generate(name_index, tmp_path):
    from llamo import retrieval as llamo_retrieval

    mol = Chem.MolFromSmiles("CCCCO")
    nearest = Retrieval(name_index, neighbours=2).find(mol, NAME_QUESTION, max_atoms=None).neighbours
    assert len(nearest) == 2
    for threshold, count in ((nearest[0].similarity, 1), (nearest[0].similarity + 0.01, 2)):
        settings = {"task_near_twin": {"iupac": threshold}}
        (tmp_path / llamo_retrieval.RETRIEVAL_FILE).write_text(json.dumps(settings), encoding="utf-8")
        found = Retrieval(name_index, tmp_path, neighbours=2).find(mol, NAME_QUESTION, max_atoms=None).neighbours
        assert [n.smiles for n in found] == [n.smiles for n in nearest[:count]]


def test_a_failing_index_leaves_the_answer_without_neighbours(tiny_llamo):
    class BrokenIndex:
        def neighbours(self, *args, **kwargs):
            raise OSError("disk gone")

    model, processor = tiny_llamo
    demo = Demo(model, processor, retrieval=Retrieval(BrokenIndex()))
    history, _, status, panel = list(demo.respond(NAME_QUESTION, [], SMILES["aspirin"], max_new_tokens=2))[-1]
    assert history[-1]["content"] and "failed" not in status
    assert "llamo-error" in panel and "disk gone" in panel and "no neighbours" in panel


def test_an_index_of_plain_records_serves_the_prompt(tiny_llamo):
    Found = collections.namedtuple("Found", "smiles answer similarity exact")

    class RecordIndex:  # any object with `neighbours()`, as `Retrieval` takes it
        def neighbours(self, smiles, k, question=None):
            return [Found("CCO", "ethanol", 0.5, False), Found("CCCO", "propan-1-ol", 0.4, False)][:k]

    model, processor = tiny_llamo
    demo = Demo(model, processor, retrieval=Retrieval(RecordIndex(), neighbours=2))
    asked = conversation_messages("CCCCO", [], NAME_QUESTION)
    messages, panel, _ = demo.in_context(asked, "CCCCO", NAME_QUESTION)
    context = [{"smiles": "CCO", "answer": "ethanol"}, {"smiles": "CCCO", "answer": "propan-1-ol"}]
    assert messages == add_neighbours(asked, context) and _cards(panel) == 2


def test_a_new_molecule_clears_the_neighbours_panel(tiny_llamo, name_index):
    model, processor = tiny_llamo
    demo = Demo(model, processor, retrieval=Retrieval(name_index))
    assert _cards(list(demo.respond(NAME_QUESTION, [], SMILES["aspirin"], max_new_tokens=2))[-1][3]) == 2
    assert demo.show(SMILES["caffeine"], True)[6] == ""


# The page, the Space entry point and the command


@pytest.fixture(scope="module")
def gradio():
    return pytest.importorskip("gradio", reason="the demo page needs gradio (pip install 'llamo[demo]')")


def test_page_builds_without_launching(gradio, tiny_llamo):
    from llamo.hub_cards.space.demo import build_demo

    model, processor = tiny_llamo
    blocks = build_demo(model, processor, model_name="tiny")
    assert isinstance(blocks, gradio.Blocks)
    config = str(blocks.get_config_file())
    for elem_id in (
        "smiles-input",
        "show-button",
        "molecule-drawing",
        "motif-groups",
        "chat",
        "question",
        "stop-button",
        "neighbours",
    ):
        assert elem_id in config
    assert not blocks.is_running
    offline = build_demo(unavailable="No bundled default model.")
    assert "Chat is unavailable" in str(offline.get_config_file())


def test_space_app_runs_without_a_model(gradio, monkeypatch):
    from llamo import default_model

    def unavailable():
        raise default_model.DefaultModelUnavailable("No bundled default model (test).")

    monkeypatch.delenv("LLAMO_MODEL", raising=False)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # what app.py would set, restored afterwards
    monkeypatch.setattr(default_model, "default_model_dir", unavailable)
    namespace = runpy.run_path(str(SPACE / "app.py"), run_name="space_app")
    assert isinstance(namespace["demo"], gradio.Blocks)
    assert "No bundled default model (test)." in str(namespace["demo"].get_config_file())


def test_space_app_loads_a_model_folder(gradio, tiny_llamo_dir, monkeypatch):
    monkeypatch.setenv("LLAMO_MODEL", str(tiny_llamo_dir))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    namespace = runpy.run_path(str(SPACE / "app.py"), run_name="space_app")
    assert "Chat is unavailable" not in str(namespace["demo"].get_config_file())


def test_space_app_serves_neighbours_from_llamo_index(gradio, tiny_llamo_dir, name_index, tmp_path, monkeypatch):
    name_index.save(tmp_path / "index")
    monkeypatch.setenv("LLAMO_MODEL", str(tiny_llamo_dir))
    monkeypatch.setenv("LLAMO_INDEX", str(tmp_path / "index"))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from llamo.hub_cards.space import demo as space_demo

    created = []
    real_build = space_demo.build_demo

    def build(*args, **kwargs):
        created.append(kwargs.get("retrieval"))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(space_demo, "build_demo", build)
    runpy.run_path(str(SPACE / "app.py"), run_name="space_app")
    assert len(created[0].index_for(NAME_QUESTION)[0]) == len(INDEX_NAMES)
    monkeypatch.setenv("LLAMO_INDEX", str(tmp_path / "missing"))  # a bad setting: no neighbours, the page still works
    namespace = runpy.run_path(str(SPACE / "app.py"), run_name="space_app")
    assert isinstance(namespace["demo"], gradio.Blocks) and not created[1].enabled
    assert created[1].model_dir == tiny_llamo_dir  # the model's own decoding settings still apply


def test_space_folder_has_its_files():
    readme = (SPACE / "README.md").read_text(encoding="utf-8")
    header = readme.split("---")[1]
    assert "sdk: gradio" in header and "app_file: app.py" in header
    assert "gradio" in (SPACE / "requirements.txt").read_text(encoding="utf-8")


def _demo_parser() -> argparse.ArgumentParser:
    from llamo.hub_cards import demo_commands

    parser = argparse.ArgumentParser(prog="llamo")
    demo_commands.register(parser.add_subparsers(dest="command"))
    return parser


def test_demo_command_options():
    args = _demo_parser().parse_args(["demo"])
    assert (args.model, args.host, args.port, args.share) == (None, "127.0.0.1", 7860, False)
    args = _demo_parser().parse_args(["demo", "some/folder", "--host", "0.0.0.0", "--port", "9000", "--share"])
    assert (args.model, args.host, args.port, args.share) == ("some/folder", "0.0.0.0", 9000, True)


def test_demo_command_index_options(gradio, tiny_llamo_dir, tmp_path):
    from llamo.cli import CommandError
    from llamo.hub_cards import demo_commands

    args = _demo_parser().parse_args(["demo"])
    assert (args.index, args.neighbours) == (None, None)
    args = _demo_parser().parse_args(["demo", "--index", "some/index", "--neighbours", "3"])
    assert (args.index, args.neighbours) == ("some/index", 3)
    assert demo_commands.MAX_NEIGHBOURS == neighbours.MAX_NEIGHBOURS
    args = _demo_parser().parse_args(["demo", str(tiny_llamo_dir), "--neighbours", "99"])
    with pytest.raises(CommandError, match="--neighbours must be between 0 and"):
        args.handler(args)
    args = _demo_parser().parse_args(["demo", str(tiny_llamo_dir), "--index", str(tmp_path / "missing")])
    with pytest.raises(CommandError, match="Index not found"):
        args.handler(args)  # refused before the model loads or the server starts
    args = _demo_parser().parse_args(["demo", str(tiny_llamo_dir), "--index", str(tmp_path)])
    with pytest.raises(CommandError, match="not a saved molecule index"):
        args.handler(args)


def test_demo_command_reports_missing_models(gradio, tmp_path, monkeypatch):
    from llamo import default_model
    from llamo.cli import CommandError

    def unavailable():
        raise default_model.DefaultModelUnavailable("No bundled default model (test).")

    monkeypatch.setattr(default_model, "default_model_dir", unavailable)
    args = _demo_parser().parse_args(["demo"])
    with pytest.raises(CommandError, match=r"No bundled default model \(test\).*llamo demo MODEL_DIR"):
        args.handler(args)
    args = _demo_parser().parse_args(["demo", str(tmp_path / "missing")])
    with pytest.raises(CommandError, match="Model folder not found"):
        args.handler(args)


def test_demo_command_without_a_model_serves_the_default_model(gradio, tiny_llamo_dir, monkeypatch):
    from llamo import default_model
    from llamo.hub_cards.space import demo as space_demo

    monkeypatch.setattr(default_model, "default_model_dir", lambda: tiny_llamo_dir)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    launched = []
    blocking_launch = space_demo.launch_demo

    def launch(*args, **kwargs):  # the command's own launch, returning once the server runs
        launched.append(blocking_launch(*args, **kwargs, prevent_thread_lock=True))
        return launched[-1]

    monkeypatch.setattr(space_demo, "launch_demo", launch)
    port = free_port()
    args = _demo_parser().parse_args(["demo", "--port", str(port)])
    assert args.model is None
    try:
        args.handler(args)
        assert len(launched) == 1 and launched[0].is_running
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200 and "<html" in response.read().decode("utf-8", "replace").lower()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as response:
            config = response.read().decode("utf-8")
    finally:
        for blocks in launched:
            blocks.close()
    assert f"Model: `{tiny_llamo_dir}`" in config and "Chat is unavailable" not in config
    assert not launched[0].is_running


def test_demo_command_takes_the_page_limits_from_a_package_that_imports_nothing():
    """`llamo demo` reads `MAX_NEIGHBOURS` and the token limits from `llamo.hub_cards.space`, whose `__init__` imports
    nothing, so `llamo --help` stays light (the command modules' other imports: tests/test_light_imports.py)."""
    tree = ast.parse((ROOT / "hub_cards" / "space" / "__init__.py").read_text(encoding="utf-8"))
    assert not [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]


# End to end, in a browser

BROWSER_TESTS_ENV = "LLAMO_BROWSER_TESTS"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _wait_for_page(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the demo exited early:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the demo did not answer at {url} within {timeout}s")


def missing_browser_tools(chromium: Path = CHROMIUM) -> list[str]:
    """What the browser test needs and this machine lacks."""
    missing = []
    if not chromium.is_file():
        missing.append(f"Debian's chromium at {chromium} (apt-get install -y chromium)")
    if importlib.util.find_spec("gradio") is None:
        missing.append("gradio (pip install -e '.[demo]')")
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright's Python package (pip install -e '.[browser-tests]'; no `playwright install`)")
    return missing


def require_browser_tools(chromium: Path = CHROMIUM) -> None:
    """Skip the browser test when its tools are missing, or fail it when `LLAMO_BROWSER_TESTS=1` asked for it."""
    missing = missing_browser_tools(chromium)
    if not missing:
        return
    reason = "the browser test needs " + "; ".join(missing)
    if os.environ.get(BROWSER_TESTS_ENV) == "1":
        pytest.fail(f"{BROWSER_TESTS_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def test_browser_test_fails_when_requested_and_skips_otherwise(tmp_path, monkeypatch):
    absent = tmp_path / "no-chromium"
    monkeypatch.delenv(BROWSER_TESTS_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs Debian's chromium"):
        require_browser_tools(absent)
    monkeypatch.setenv(BROWSER_TESTS_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=rf"{BROWSER_TESTS_ENV}=1 but the browser test needs Debian's"):
        require_browser_tools(absent)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "playwright" else real_find_spec(name, *args)
    )
    with pytest.raises(pytest.fail.Exception, match="playwright's Python package"):
        require_browser_tools(absent)


def _wait_for_answers(page, count: int) -> None:
    """Wait until the chat shows `count` answers and the last one is finished."""
    from playwright.sync_api import expect

    expect(page.locator("#chat .bot")).to_have_count(count, timeout=60_000)
    status = page.locator("#chat-status")
    # the status can still be empty (or loading the index) when the answer's bubble appears: wait for a steady answer
    last, deadline = None, time.monotonic() + 120
    while time.monotonic() < deadline:
        expect(status).not_to_contain_text("Generating", timeout=120_000)
        expect(status).not_to_contain_text("Loading", timeout=120_000)
        text = page.locator("#chat .bot").last.inner_text()
        if text.strip() and text == last:
            return
        last = text
        time.sleep(0.5)
    raise AssertionError(f"answer {count} did not finish within 120 s")


def test_demo_in_headless_chromium(tiny_llamo_dir, tmp_path):
    """`llamo demo MODEL_DIR` on a free port, driven in headless chromium: a molecule, a question and a follow-up, an
    example, a bad SMILES. Screenshots (demo.png, demo-error.png) go to tmp_path and to `LLAMO_TEST_ARTIFACTS`."""
    require_browser_tools()
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    launcher = (
        "import argparse, sys; from llamo.hub_cards import demo_commands; "
        "parser = argparse.ArgumentParser(); demo_commands.register(parser.add_subparsers()); "
        "args = parser.parse_args(sys.argv[1:]); args.handler(args)"
    )
    log = tmp_path / "server.log"
    with open(log, "w", encoding="utf-8") as output:
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                launcher,
                "demo",
                str(tiny_llamo_dir),
                "--port",
                str(port),
                "--max-new-tokens",
                "32",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**subprocess_env(), "GRADIO_ANALYTICS_ENABLED": "False"},
        )
    outside: list[str] = []
    try:
        _wait_for_page(url, server, log)
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1280, "height": 1000},
            )
            page = context.new_page()
            page.on(
                "request",
                lambda request: (
                    outside.append(request.url)
                    if request.url.startswith(("http:", "https:", "ws:", "wss:"))
                    and not request.url.startswith((url, f"ws://127.0.0.1:{port}/"))
                    else None
                ),
            )
            page.goto(url, wait_until="load")
            expect(page.locator("#smiles-input textarea")).to_be_visible(timeout=60_000)

            page.locator("#smiles-input textarea").fill(SMILES["aspirin"])
            page.locator("#show-button").click()
            expect(page.locator("#molecule-drawing svg")).to_be_visible(timeout=60_000)
            expect(page.locator("#motif-groups table tbody tr")).to_have_count(3)
            expect(page.locator("#molecule-status")).to_contain_text("3 functional groups")

            page.locator("#question textarea").fill("Describe this molecule.")
            page.locator("#send-button").click()
            _wait_for_answers(page, 1)
            expect(page.locator("#chat .user")).to_have_text(["Describe this molecule."])
            expect(page.locator("#question textarea")).to_have_value("")
            first_answer = page.locator("#chat .bot").first.inner_text().strip()
            assert first_answer

            page.locator("#question textarea").fill("What is its IUPAC name?")  # a follow-up, same conversation
            page.locator("#question textarea").press("Enter")
            _wait_for_answers(page, 2)
            expect(page.locator("#chat .user")).to_have_text(["Describe this molecule.", "What is its IUPAC name?"])
            answers = [text.strip() for text in page.locator("#chat .bot").all_inner_texts()]
            assert len(answers) == 2 and answers[0] == first_answer and answers[1]
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)

            page.get_by_role("button", name="Caffeine").click()  # an example shows its molecule at once
            expect(page.locator("#motif-groups table tbody tr")).to_have_count(7, timeout=30_000)
            expect(page.locator("#chat .bot")).to_have_count(0)  # a new molecule resets the conversation

            page.locator("#smiles-input textarea").fill("C1CC")
            page.locator("#show-button").click()
            expect(page.locator("#molecule-status .llamo-error")).to_contain_text("Unparsable SMILES", timeout=30_000)
            expect(page.locator("#molecule-drawing svg")).to_have_count(0)
            page.screenshot(path=str(tmp_path / "demo-error.png"), full_page=True)
            context.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    assert not outside, f"the page fetched from outside the demo server: {outside}"
    for name in ("demo.png", "demo-error.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    artifacts = os.environ.get("LLAMO_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        for name in ("demo.png", "demo-error.png"):
            shutil.copyfile(tmp_path / name, Path(artifacts) / name)


def test_the_neighbours_own_answers_compete_where_the_model_says(tiny_llamo, name_index, tmp_path, monkeypatch):
    import llamo.pipeline_llamo as pipeline_module
    from llamo import retrieval as llamo_retrieval

    model, processor = tiny_llamo
    scores = [-3.0, -1.0]
    monkeypatch.setattr(pipeline_module, "answer_log_likelihoods", lambda model, prompt, answers, pad: scores)
    demo = Demo(model, processor, retrieval=Retrieval(name_index, tmp_path, neighbours=1))
    describe = "Describe this molecule."
    steps = list(demo.respond(describe, [], "CCCCCO", max_new_tokens=3))
    assert "known answer" not in steps[-1][2]  # the model's settings list no task: its own answer
    (tmp_path / llamo_retrieval.RETRIEVAL_FILE).write_text(json.dumps({"neighbour_answer_tasks": ["description"]}))
    assert "known answer" not in list(demo.respond(NAME_QUESTION, [], "CCCCCO", max_new_tokens=3))[-1][2]
    steps = list(demo.respond(describe, [], "CCCCCO", max_new_tokens=3))
    nearest = name_index.neighbours("CCCCCO", k=1)[0]
    assert steps[-1][0][-1] == {"role": "assistant", "content": nearest.answer}
    assert f"the known answer of neighbour 1 (similarity {nearest.similarity:.2f})" in steps[-1][2]
    assert "the model scores it -1.000 per token, its own answer -3.000." in steps[-1][2]
    follow_up = list(demo.respond("And its formula?", steps[-1][0], "CCCCCO", max_new_tokens=3))
    assert "known answer" not in follow_up[-1][2]  # the neighbours' answers answer the first question only
    scores[0] = 0.0
    own = list(demo.respond(describe, [], "CCCCCO", max_new_tokens=3))
    assert "known answer" not in own[-1][2] and own[-1][0][-1]["content"] != nearest.answer
