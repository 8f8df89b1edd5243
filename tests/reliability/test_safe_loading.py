"""Loading never executes code, and a model directory that is not what its manifest and config say is refused
with a message that names what is wrong."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from recsys.cli import main
from recsys.errors import ModelLoadError
from recsys.retrieval import Recommender
from recsys.saved_model import CONFIG, MANIFEST, WEIGHTS, load_model_files, save_model
from recsys.training.checkpoints import load_checkpoint_file
from tests.reliability.conftest import Payload, quick
from tests.retrieval.conftest import tiny_saved_model


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return save_model(tiny_saved_model(), tmp_path / "model")


def rewrite(directory: Path, name: str, data: bytes, **manifest_changes: object) -> None:
    """Replace a file of a model directory and make the manifest agree with it (what a careful attacker or a
    buggy tool would do): only the checks behind the checksum are left to catch it."""
    (directory / name).write_bytes(data)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    manifest.update(manifest_changes)
    (directory / MANIFEST).write_text(json.dumps(manifest))


def test_the_payload_is_live(tmp_path: Path) -> None:
    """The control: plain unpickling of the payload does create its marker, so the tests below that find no
    marker show that loading refused to unpickle, not that the payload was inert."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps({"state_dict": Payload(marker)}))
    assert marker.exists()


def test_a_pickle_as_weights_is_refused_and_never_run(model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"item_emb.weight": Payload(marker)})
    (model_dir / WEIGHTS).write_bytes(payload)
    with pytest.raises(ModelLoadError, match=f"{WEIGHTS}: checksum does not match the manifest"):
        Recommender.load(model_dir)
    rewrite(model_dir, WEIGHTS, payload)  # checksum made to match: safetensors itself refuses it
    with pytest.raises(ModelLoadError, match=f"{WEIGHTS}: not a valid safetensors file"):
        Recommender.load(model_dir)
    buffer_path = tmp_path / "torch_pickle.pt"
    torch.save({"item_emb.weight": Payload(marker)}, buffer_path)  # a torch.save zip, pickle inside
    rewrite(model_dir, WEIGHTS, buffer_path.read_bytes())
    with pytest.raises(ModelLoadError, match="not a valid safetensors file"):
        load_model_files(model_dir)
    assert not marker.exists()


def test_a_yaml_python_tag_in_the_config_is_refused_and_never_run(model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    rewrite(model_dir, CONFIG, f"model: !!python/object/apply:builtins.open ['{marker}', 'w']\n".encode())
    with pytest.raises(ModelLoadError, match="unreadable model file"):
        load_model_files(model_dir)
    assert not marker.exists()


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_pickle_as_checkpoint_is_refused_and_never_run(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "last.ckpt"
    content = {"state_dict": Payload(marker), "epoch": 0}
    if writer == "torch.save":
        torch.save(content, checkpoint)
    else:
        checkpoint.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(ModelLoadError, match="refused: it holds objects other than tensors"):
        load_checkpoint_file(checkpoint)
    assert not marker.exists()


def test_resume_from_a_planted_checkpoint_stops_with_one_line(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    cfg = quick(tmp_path, "trainer.max_epochs=2", "tracking.enabled=false")
    run_dir = tmp_path / "runs" / "planted"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (run_dir / "run.json").write_text(json.dumps({"started": 0.0}))
    torch.save({"state_dict": Payload(marker), "epoch": 0, "global_step": 1}, run_dir / "checkpoints" / "last.ckpt")
    assert main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {run_dir / 'checkpoints' / 'last.ckpt'}: refused"), err
    assert "Unsupported global" in err[-1]
    assert not marker.exists()
    assert not (run_dir / "model").exists()


def test_no_code_path_unpickles() -> None:
    """Every torch.load in the package passes weights_only=True, and nothing calls pickle.load(s)."""
    package = Path(__file__).parents[2] / "recsys"
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"
        assert "pickle.load" not in text and "allow_pickle=True" not in text, path


# ---------------------------------------------------------------------------------------------------------
# Each check of a model directory, with its message


def test_truncated_weights_fail_the_checksum(model_dir: Path) -> None:
    data = (model_dir / WEIGHTS).read_bytes()
    (model_dir / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=f"{WEIGHTS}: checksum does not match the manifest"):
        load_model_files(model_dir)
    with pytest.raises(ModelLoadError, match=f"{WEIGHTS}: not a valid safetensors file"):
        load_model_files(model_dir, verify=False)


def test_format_version_from_the_future(model_dir: Path) -> None:
    manifest = json.loads((model_dir / MANIFEST).read_text())
    (model_dir / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ModelLoadError, match="model format version 99 is not supported .* reads version 1"):
        Recommender.load(model_dir)


def test_weights_that_disagree_with_the_manifest_shapes(model_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(model_dir / WEIGHTS))
    state["item_emb.weight"] = torch.zeros(41, 16)
    save_file(state, str(model_dir / "w"))
    rewrite(model_dir, WEIGHTS, (model_dir / "w").read_bytes())
    with pytest.raises(ModelLoadError, match=r"tensor item_emb.weight has shape \[41, 16\], manifest says \[31, 16\]"):
        load_model_files(model_dir)


def test_weights_that_disagree_with_the_config(model_dir: Path) -> None:
    config = yaml.safe_load((model_dir / CONFIG).read_text())
    config["model"]["hidden"] = 32
    rewrite(model_dir, CONFIG, yaml.safe_dump(config).encode())
    with pytest.raises(ModelLoadError, match=r"tensor item_emb.weight has shape \[31, 16\], but the sasrec config "
                                             r"\(n_items=30, model.hidden=32, .*\) gives it \[31, 32\]"):
        Recommender.load(model_dir)


def test_item_count_that_disagrees_with_the_item_map(model_dir: Path) -> None:
    manifest = json.loads((model_dir / MANIFEST).read_text())
    (model_dir / MANIFEST).write_text(json.dumps({**manifest, "n_items": 40}))
    with pytest.raises(ModelLoadError, match="manifest says n_items=40 but item_map.parquet has 30 rows"):
        Recommender.load(model_dir)


def test_weights_missing_a_tensor_or_holding_an_extra_one(model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    original = load_file(str(model_dir / WEIGHTS))
    for name, state, message in (
        ("missing", {k: v for k, v in original.items() if k != "final_norm.weight"},
         "the weights lack tensor final_norm.weight, which the sasrec config"),
        ("extra", {**original, "surprise": torch.zeros(2)}, "the weights hold tensor surprise, which a sasrec model"),
    ):
        save_file(state, str(tmp_path / name))
        rewrite(model_dir, WEIGHTS, (tmp_path / name).read_bytes(),
                shapes={k: list(v.shape) for k, v in state.items()})
        with pytest.raises(ModelLoadError, match=message):
            Recommender.load(model_dir)
