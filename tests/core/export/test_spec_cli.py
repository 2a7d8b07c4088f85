"""``export.json`` (how a run directory rebuilds its final model) and the ``mpq export`` command."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs the [export] extra (onnx)")
pytest.importorskip("onnxruntime", reason="the report needs the [export] extra (onnxruntime)")

import onnx  # noqa: E402

from core.cli import main  # noqa: E402
from core.errors import CheckpointError, ExportError, PolicyError  # noqa: E402
from core.export.spec import (  # noqa: E402
    ExportSpec,
    build_spec_model,
    find_export_spec,
    load_export_spec,
    model_from_run,
    save_weights,
    write_export_spec,
)
from core.models import build_model  # noqa: E402
from core.nn import QConv2d, QuantSpec, quantize_model  # noqa: E402
from core.policy import BitPolicy, policy_layer_names  # noqa: E402

MODEL = {"model": "digits_resnet", "num_classes": 10, "input_size": (3, 8, 8)}
QUANT = asdict(QuantSpec(kind="fixed", w_quant="lsq", a_quant="lsq", first="w8", last="w8a8"))


def _policy(model) -> BitPolicy:
    names = policy_layer_names(model)
    return BitPolicy({n: (2 + i % 5, 3 + i % 4) for i, n in enumerate(names)}, {"method": "test"})


def _run_dir(tmp_path, checkpoint="checkpoints/last.pt", widths=(4, 8, 8)):
    """A run directory as a final trainer leaves it: trained weights + export.json."""
    kwargs = {"widths": list(widths), "blocks": 1}
    model = build_model(MODEL["model"], num_classes=10, **kwargs)
    quantize_model(model, QuantSpec(**QUANT))
    policy = _policy(model)
    policy.apply(model)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 3, 8, 8))  # LSQ steps and BN statistics
    spec = ExportSpec(checkpoint=checkpoint, quant=QUANT, policy=policy.to_dict(), model_kwargs=kwargs,
                      **MODEL)
    run = tmp_path / "run" / "train"
    save_weights(run / checkpoint, model)
    write_export_spec(run, spec)
    return tmp_path / "run", model.eval(), policy


def test_spec_round_trip_and_rebuild(tmp_path):
    root, model, policy = _run_dir(tmp_path)
    path = find_export_spec(root)  # one level down
    assert path == root / "train" / "export.json" and find_export_spec(path) == path
    spec = load_export_spec(path)
    assert spec.input_size == (3, 8, 8) and spec.policy == policy.to_dict()
    rebuilt, rebuilt_policy, _, _ = model_from_run(root)
    assert rebuilt_policy == policy
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_float_spec_and_incomplete_spec():
    model, policy = build_spec_model(ExportSpec(checkpoint="x.pt", **MODEL))  # EdMIPS's float reference
    assert policy is None and not any(isinstance(m, QConv2d) for m in model.modules())
    with pytest.raises(ExportError, match="no policy"):
        build_spec_model(ExportSpec(checkpoint="x.pt", quant=QUANT, **MODEL))
    with pytest.raises(ExportError, match="no quant section"):
        build_spec_model(ExportSpec(checkpoint="x.pt", policy={"layers": [], "meta": {}}, **MODEL))


def test_malformed_or_missing_spec(tmp_path):
    with pytest.raises(ExportError, match="no export.json"):
        find_export_spec(tmp_path)
    (tmp_path / "export.json").write_text(json.dumps({"model": "x", "num_classes": 2, "input_size": [3, 8],
                                                      "checkpoint": "c.pt"}))
    with pytest.raises(ExportError, match="input_size must be"):
        load_export_spec(tmp_path / "export.json")
    (tmp_path / "export.json").write_text(json.dumps({"model": "x", "extra": 1}))
    with pytest.raises(ExportError, match=r"unknown key\(s\) \['extra'\]"):
        load_export_spec(tmp_path / "export.json")


def test_cli_exports_a_run_dir_with_report(tmp_path, capsys):
    root, model, policy = _run_dir(tmp_path)
    out = tmp_path / "model.onnx"
    assert main(["export", str(root), "-o", str(out), "--report"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "size on disk" in text and "physical limit" in text
    assert "onnxruntime CPU latency" in text and "argmax agreement 100.0%" in text
    for name, (w, a) in policy.items():  # every layer's bits in the per-layer table
        assert any(line.split()[:4] == [name, "weight", "lsq", str(w)] for line in text.splitlines())
        assert any(line.split()[:4] == [name, "activation", "lsq", str(a)] for line in text.splitlines())
    loaded = onnx.load(out)
    props = {p.key: p.value for p in loaded.metadata_props}
    assert BitPolicy.from_dict(json.loads(props["mpq.policy"])) == policy
    assert props["mpq.model"] == "digits_resnet" and json.loads(props["mpq.input_size"]) == [3, 8, 8]


def test_cli_from_model_policy_checkpoint(tmp_path, capsys):
    root, model, policy = _run_dir(tmp_path, widths=(4, 8, 16))  # digits_resnet's default widths
    policy.save(tmp_path / "policy.json")
    out = tmp_path / "m.onnx"
    checkpoint = root / "train" / "checkpoints" / "last.pt"
    argv = ["export", "--model", "digits_resnet", "--policy", str(tmp_path / "policy.json"), "--checkpoint",
            str(checkpoint), "--first", "w8", "--last", "w8a8", "-o", str(out)]
    assert main(argv) == 0 and onnx.load(out).graph.input[0].type.tensor_type.shape.dim[3].dim_value == 16
    other, _, _ = _run_dir(tmp_path / "other", widths=(4, 8, 8))
    argv[argv.index("--checkpoint") + 1] = str(other / "train" / "checkpoints" / "last.pt")
    argv[-1] = str(tmp_path / "bad.onnx")
    capsys.readouterr()
    assert main(argv) == 2  # weights of another width: one clear message, no file
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and "does not match" in err and "policy" in err
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.glob(".bad.*"))


def test_mismatched_policy_and_checkpoint_write_nothing(tmp_path):
    root, model, policy = _run_dir(tmp_path)
    spec_path = root / "train" / "export.json"
    data = json.loads(spec_path.read_text())
    data["policy"]["layers"][0]["name"] = "layer9.conv"  # a policy of another model
    spec_path.write_text(json.dumps(data))
    out = tmp_path / "m.onnx"
    assert main(["export", str(root), "-o", str(out)]) == 2
    assert not out.exists()
    with pytest.raises(PolicyError, match="layer9.conv"):
        model_from_run(root)
    data = json.loads((root / "train" / "export.json").read_text())
    data["policy"] = policy.to_dict()
    data["model_kwargs"]["widths"] = [4, 8, 16]  # weights of another width
    spec_path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="does not match digits_resnet quantized with lsq/lsq"):
        model_from_run(root)
    assert main(["export", str(root), "-o", str(out)]) == 2 and not out.exists()


def test_cli_argument_errors(tmp_path, capsys):
    assert main(["export", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "--model, --policy, --checkpoint" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--model", "resnet20", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
