"""save_pretrained -> a fresh Python process without `llamo` -> Auto classes with trust_remote_code=True."""

import ast
import json
import subprocess
import sys
import textwrap

import torch

from .conftest import SMILES, WITHOUT_LLAMO, molecule_messages, subprocess_env

CHILD = WITHOUT_LLAMO + textwrap.dedent(
    """
    import json, sys

    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor

    folder, conversations = sys.argv[1], json.loads(sys.argv[2])
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        hidden = base(**inputs).last_hidden_state
    print(json.dumps({
        "config_class": type(config).__name__,
        "num_graph_tokens": config.num_graph_tokens,
        "base_class": type(base).__name__,
        "model_class": type(model).__name__,
        "processor_class": type(processor).__name__,
        "module": type(model).__module__,
        "tokens": output[:, inputs["input_ids"].shape[1]:].tolist(),
        "hidden_sum": float(hidden.double().sum()),
        "answers": processor.batch_decode(output),
    }))
    """
)


def test_folder_loads_without_llamo_and_generates_the_same(tiny_llamo, tiny_llamo_dir, tmp_path):
    model, processor = tiny_llamo
    conversations = [molecule_messages(SMILES["aspirin"]), molecule_messages(SMILES["salt"], "Name it.")]
    inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        hidden = model.model(**inputs).last_hidden_state
    expected = output[:, inputs["input_ids"].shape[1] :].tolist()

    env = subprocess_env()
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tiny_llamo_dir), json.dumps(conversations)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    child = json.loads(result.stdout.strip().splitlines()[-1])
    assert child["config_class"] == "LlamoConfig" and child["num_graph_tokens"] == 16
    assert child["base_class"] == "LlamoModel"
    assert child["model_class"] == "LlamoForConditionalGeneration"
    assert child["processor_class"] == "LlamoProcessor"
    assert child["module"].startswith("transformers_modules.")  # the folder's own code, not the package
    assert child["tokens"] == expected
    assert abs(child["hidden_sum"] - float(hidden.double().sum())) < 1e-3
    assert child["answers"] == processor.batch_decode(output)


def test_saved_folder_holds_the_remote_code_files(tiny_llamo_dir):
    names = {path.name for path in tiny_llamo_dir.iterdir()}
    assert {"configuration_llamo.py", "modeling_llamo.py", "processing_llamo.py", "featurization_llamo.py"} <= names
    assert "smiles_llamo.py" in names
    assert {"config.json", "model.safetensors", "processor_config.json", "chat_template.jinja"} <= names
    assert not {"cli.py", "builder.py", "convert_llamo_original_to_hf.py", "__init__.py"} & names
    config = json.loads((tiny_llamo_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_llamo.LlamoConfig",
        "AutoModel": "modeling_llamo.LlamoModel",
        "AutoModelForCausalLM": "modeling_llamo.LlamoForConditionalGeneration",
    }
    for name in (
        "chat_template_llamo.py",
        "configuration_llamo.py",
        "feature_extraction_llamo.py",
        "modeling_llamo.py",
        "processing_llamo.py",
        "featurization_llamo.py",
        "smiles_llamo.py",
    ):
        for node in ast.walk(ast.parse((tiny_llamo_dir / name).read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 1 or not (node.module or "").startswith("llamo"), (name, node.module)
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("llamo") for alias in node.names), name
    assert "auto_map" not in json.loads((tiny_llamo_dir / "tokenizer_config.json").read_text())


def test_reload_in_process_keeps_weights(tiny_llamo, tiny_llamo_dir):
    from llamo import LlamoForConditionalGeneration

    model, _ = tiny_llamo
    again = LlamoForConditionalGeneration.from_pretrained(tiny_llamo_dir)
    original = model.state_dict()
    for name, tensor in again.state_dict().items():
        torch.testing.assert_close(tensor, original[name], msg=name)
    assert again.generation_config.suppress_tokens == [model.config.graph_token_id]
