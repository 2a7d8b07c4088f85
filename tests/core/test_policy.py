"""BitPolicy: round trips, the file format, every PolicyError case, validate and apply."""

from __future__ import annotations

import json
import os

import pytest
from torch import nn

from core.errors import PolicyError
from core.policy import BitPolicy, policy_layer_names
from tests.core.layer_doubles import FixedConv, MixedConv

# EdMIPS's published ResNet-18 configuration (official code; indices into w {1,2,3,4}, a {2,3,4}).
EDMIPS_R18_A = [0, 0, 0, 0, 0, 0, 2, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0]
EDMIPS_R18_W = [0, 0, 0, 0, 2, 1, 3, 1, 0, 2, 1, 3, 1, 0, 2, 1, 3, 1, 1]




def small_float() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 2))


def small_quantized(layer=FixedConv) -> nn.Sequential:
    """First conv kept float, two quantized convs, float fc (as quantize_model leaves a model)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), layer(4, 4, 3), nn.ReLU(), layer(4, 4, 3), nn.Flatten(),
                         nn.Linear(4 * 2 * 2, 2))


def test_round_trip_preserves_order_bits_and_meta(tmp_path):
    policy = BitPolicy({"b": (4, 2), "a": (2, 3), "c": (8, 8)}, {"method": "edmips", "bops": 1.5e9})
    path = tmp_path / "sub" / "policy.json"
    policy.save(path)
    loaded = BitPolicy.load(path)
    assert loaded == policy
    assert loaded.names == ["b", "a", "c"]
    data = json.loads(path.read_text())
    assert data == {"layers": [{"name": "b", "w_bits": 4, "a_bits": 2},
                               {"name": "a", "w_bits": 2, "a_bits": 3},
                               {"name": "c", "w_bits": 8, "a_bits": 8}],
                    "meta": {"method": "edmips", "bops": 1.5e9}}
    assert BitPolicy.from_dict(policy.to_dict()) == policy


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "policy.json"
    BitPolicy({"a": (2, 2)}).save(path)
    bad = BitPolicy({"a": (4, 4)}, {"not_json": object()})
    with pytest.raises(PolicyError, match="JSON"):
        bad.save(path)
    assert BitPolicy.load(path)["a"] == (2, 2)  # the old file is intact
    assert os.listdir(tmp_path) == ["policy.json"]


def test_uniform_from_float_model_and_names():
    model = small_float()
    policy = BitPolicy.uniform(model, 4, 8)
    assert policy.names == ["0", "2", "4"]  # every Conv2d/Linear of a float model, in model order
    assert set(policy.layers.values()) == {(4, 8)}
    assert BitPolicy.uniform(["x", "y"], 2, 2).layers == {"x": (2, 2), "y": (2, 2)}


def test_uniform_of_quantized_model_covers_quantized_layers_only():
    assert policy_layer_names(small_quantized()) == ["1", "3"]
    assert BitPolicy.uniform(small_quantized(), 2, 2).names == ["1", "3"]


def test_from_indices_reproduces_edmips_resnet18_config():
    names = [f"l{i}" for i in range(19)]
    policy = BitPolicy.from_indices(names, EDMIPS_R18_W, EDMIPS_R18_A, [1, 2, 3, 4], [2, 3, 4])
    assert policy["l6"] == (4, 4) and policy["l0"] == (1, 2) and policy["l18"] == (2, 2)
    assert [w for w, _ in policy.layers.values()].count(1) == 6


@pytest.mark.parametrize("w_idx, a_idx, match", [
    ([0, 1], [0], "equally long"),
    ([0, 4], [0, 0], "weight index 4"),
    ([0, 0], [0, -1], "activation index -1"),
])
def test_from_indices_errors(w_idx, a_idx, match):
    with pytest.raises(PolicyError, match=match):
        BitPolicy.from_indices(["a", "b"], w_idx, a_idx, [1, 2, 3, 4], [2, 3, 4])


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON .line 1"),
    ("[1, 2]", "expected a JSON object"),
    ('{"meta": {}}', "missing 'layers'"),
    ('{"layers": {"a": [2, 2]}}', "'layers' must be a list"),
    ('{"layers": [[2, 2]]}', r"layers\[0\] must be an object"),
    ('{"layers": [{"name": "conv", "w_bits": 2}]}', "layer 'conv': missing .'a_bits'"),
    ('{"layers": [{"name": "conv", "w_bits": 2, "a_bits": 2, "bits": 3}]}', "unknown key"),
    ('{"layers": [{"name": "conv", "w_bits": "4", "a_bits": 2}]}', "w_bits must be an integer"),
    ('{"layers": [{"name": "conv", "w_bits": 4.0, "a_bits": 2}]}', "w_bits must be an integer"),
    ('{"layers": [{"name": "conv", "w_bits": 4, "a_bits": true}]}', "a_bits must be an integer"),
    ('{"layers": [{"name": "conv", "w_bits": 0, "a_bits": 2}]}', "w_bits=0 is unsupported"),
    ('{"layers": [{"name": "conv", "w_bits": 4, "a_bits": 33}]}', "a_bits=33 is unsupported"),
    ('{"layers": [{"name": 7, "w_bits": 4, "a_bits": 4}]}', "non-empty strings"),
    ('{"layers": [{"name": "c", "w_bits": 4, "a_bits": 4}, {"name": "c", "w_bits": 2, "a_bits": 2}]}',
     "'c' appears twice"),
    ('{"layers": [], "meta": [1]}', "'meta' must be an object"),
    ('{"layers": [], "extra": 1}', "unknown top-level key"),
])
def test_load_errors_name_the_problem(tmp_path, content, match):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(PolicyError, match=match) as info:
        BitPolicy.load(path)
    assert str(path) in str(info.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        BitPolicy.load(tmp_path / "nope.json")


def test_validate_unknown_module_suggests_names():
    model = small_quantized()
    with pytest.raises(PolicyError, match=r"layer '33' is not a module .*did you mean 3"):
        BitPolicy({"1": (2, 2), "33": (2, 2)}).validate(model)


def test_validate_rejects_non_conv_module():
    model = small_float()
    with pytest.raises(PolicyError, match="'1' is a BatchNorm2d"):
        BitPolicy({"1": (2, 2)}).validate(model)


def test_validate_missing_quantized_layer():
    model = small_quantized()
    with pytest.raises(PolicyError, match="misses 1 quantized layer.*: 3"):
        BitPolicy({"1": (2, 2)}).validate(model)
    BitPolicy({"1": (2, 2)}).validate(model, require_all=False)


def test_validate_allowed_bits_and_load_with_model(tmp_path):
    model = small_quantized()
    policy = BitPolicy({"1": (2, 2), "3": (5, 2)})
    with pytest.raises(PolicyError, match=r"w_bits=5 is not supported here \(allowed \[1, 2, 3, 4"):
        policy.validate(model, w_bits=[1, 2, 3, 4])
    with pytest.raises(PolicyError, match="a_bits=2 is not supported"):
        policy.validate(model, a_bits=[3, 4])
    policy.save(tmp_path / "p.json")
    with pytest.raises(PolicyError, match="w_bits=5"):
        BitPolicy.load(tmp_path / "p.json", model=model, w_bits=[2, 4])
    assert BitPolicy.load(tmp_path / "p.json", model=model) == policy


def test_validate_checks_searchable_candidates():
    model = small_quantized(MixedConv)
    BitPolicy({"1": (1, 2), "3": (4, 4)}).validate(model)
    with pytest.raises(PolicyError, match=r"layer '3': \(8, 4\) is outside the searchable layer's"):
        BitPolicy({"1": (1, 2), "3": (8, 4)}).validate(model)


def test_apply_sets_bits_on_fixed_layers():
    model = small_quantized()
    BitPolicy({"1": (2, 3), "3": (4, 8)}).apply(model)
    assert (model[1].w_bits, model[1].a_bits, model[3].w_bits, model[3].a_bits) == (2, 3, 4, 8)


def test_apply_is_all_or_nothing():
    model = small_quantized()
    with pytest.raises(PolicyError, match="'0' is a float Conv2d"):
        BitPolicy({"1": (2, 3), "3": (4, 8), "0": (8, 8)}).apply(model)
    assert (model[1].w_bits, model[3].w_bits) == (32, 32)
    with pytest.raises(PolicyError, match="misses"):
        BitPolicy({"1": (2, 3)}).apply(model)
    BitPolicy({"1": (2, 3)}).apply(model, strict=False)
    assert (model[1].w_bits, model[3].w_bits) == (2, 32)


def test_apply_refuses_searchable_layers():
    with pytest.raises(PolicyError, match="searchable MixedConv"):
        BitPolicy({"1": (2, 2), "3": (2, 2)}).apply(small_quantized(MixedConv))


def test_getitem_unknown_and_table():
    policy = BitPolicy({"layer1.0.conv1": (4, 2), "fc": (8, 8)}, {"method": "llt"})
    with pytest.raises(PolicyError, match="'conv9' is not in the policy"):
        policy["conv9"]
    lines = policy.table().splitlines()
    assert lines[1].split() == ["0", "layer1.0.conv1", "4", "2"]
    assert lines[2].split() == ["1", "fc", "8", "8"]
    assert lines[-1] == "meta: method=llt"


def test_numpy_integers_become_ints():
    np = pytest.importorskip("numpy")
    policy = BitPolicy({"a": (np.int64(4), np.int32(2))})
    assert policy["a"] == (4, 2) and type(policy["a"][0]) is int
    json.dumps(policy.to_dict())


def test_constructor_rejects_bad_pairs():
    with pytest.raises(PolicyError, match="pair"):
        BitPolicy({"a": (2,)})
    with pytest.raises(PolicyError, match="pair"):
        BitPolicy({"a": "22"})
    with pytest.raises(PolicyError, match="meta must be a mapping"):
        BitPolicy({"a": (2, 2)}, meta=[1])


def test_with_core_nn_layers_frozen_edges_and_switchable_bn():
    core_nn = pytest.importorskip("core.nn")
    from core.models import build_model

    model = build_model("resnet20", num_classes=10)
    spec = core_nn.QuantSpec(kind="switchable", w_bits=4, a_bits=4, w_candidates=[2, 3, 4, 5, 6],
                             a_candidates=[2, 3, 4, 5, 6], options={"switchable_bn": True},
                             first="w8", last="w8a8")
    names = core_nn.quantize_model(model, spec)
    assert policy_layer_names(model) == names  # the 8-bit first conv and fc are frozen, not in policies
    policy = BitPolicy.uniform(model, 2, 5)
    policy.validate(model)
    policy.apply(model)
    bits = core_nn.current_bits(model)
    assert bits["layer1.0.conv1"] == (2, 5) and bits["conv1"] == (8, 32) and bits["fc"] == (8, 8)
    assert model.layer1[0].bn1.bits == 2  # the switchable BN followed its conv
    with pytest.raises(PolicyError, match="w_bits=1 is not supported by its quantizer"):
        BitPolicy.uniform(model, 1, 5).apply(model)
    assert core_nn.current_bits(model)["layer1.0.conv1"] == (2, 5)
