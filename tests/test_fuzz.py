"""Property-based fuzzing of the artefact loader (hypothesis, bounded examples).

Whatever is in config.json, in a safetensors header or in a scaler file, ``from_pretrained``
either returns a template or raises one of sweet-hub's own errors: never a raw exception from
json, torch or safetensors, never a hang, never an allocation the files do not justify (shapes
are checked from the header, the core size is capped before anything is built).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from conftest import make_template
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweet_hub import SweetHubError, SweetTemplate

# SWEET_FUZZ_EXAMPLES=2000 for a long local run; CI keeps 60 per property
FUZZ = settings(max_examples=int(os.environ.get("SWEET_FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "template"
    make_template().save_pretrained(folder)
    return folder


def _copy(pristine: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(pristine, target)
    return target


def _load_or_project_error(folder: Path) -> None:
    try:
        SweetTemplate.from_pretrained(folder)
    except SweetHubError:
        pass


@FUZZ
@given(changes=st.dictionaries(st.sampled_from([
    "sweet_format_version", "img_size", "patch_size", "in_chans", "num_classes", "head_dim", "ranks", "vector_rank",
    "anchors", "mean", "std", "global_pool", "depth_rescale", "width_rescale", "label_names", "scalers", "card_info",
    "files", "architecture", "pretrained_cfg", "extra_field",
]), json_values, max_size=4), removed=st.sets(st.sampled_from(["ranks", "anchors", "scalers", "mean", "head_dim"]), max_size=2))
def test_any_config_json_loads_or_raises_a_project_error(pristine, tmp_path, changes, removed):
    folder = _copy(pristine, tmp_path, "config")
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    for key in removed:
        config.pop(key, None)
    (folder / "config.json").write_text(json.dumps(config))
    _load_or_project_error(folder)


@FUZZ
@given(ranks=st.lists(st.integers(-5, 10**6), min_size=0, max_size=4), anchors=json_values)
def test_sizes_in_config_json_never_allocate_what_the_files_do_not_hold(pristine, tmp_path, ranks, anchors):
    folder = _copy(pristine, tmp_path, "sizes")
    config = json.loads((folder / "config.json").read_text())
    config.update(ranks=ranks, anchors=anchors)
    (folder / "config.json").write_text(json.dumps(config))
    _load_or_project_error(folder)


def _header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def _write(path: Path, header: dict | bytes, body: bytes) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


@FUZZ
@given(tensor=st.sampled_from(["G", "G_vec", "patch_weight", "pos_embed", "head_weight"]),
       field=st.sampled_from(["shape", "dtype", "data_offsets"]), value=json_values,
       file=st.sampled_from(["template.safetensors", "scalers/d2_w32.safetensors"]))
def test_edited_safetensors_headers_load_or_raise_a_project_error(pristine, tmp_path, tensor, field, value, file):
    folder = _copy(pristine, tmp_path, "header")
    path = folder / file
    header, body = _header(path)
    name = tensor if tensor in header else next(k for k in header if k != "__metadata__")
    header[name][field] = value
    _write(path, header, body)
    _load_or_project_error(folder)


@FUZZ
@given(data=st.binary(max_size=256), cut=st.integers(0, 4096), file=st.sampled_from(["template.safetensors", "scalers/d4_w64.safetensors"]))
def test_garbage_and_truncated_tensor_files_raise_a_project_error(pristine, tmp_path, data, cut, file):
    folder = _copy(pristine, tmp_path, "garbage")
    path = folder / file
    original = path.read_bytes()
    path.write_bytes(original[:cut] + data if cut < len(original) else data)
    with pytest.raises(SweetHubError):
        SweetTemplate.from_pretrained(folder)


@FUZZ
@given(length=st.integers(0, 2**64 - 1), header=st.binary(max_size=64))
def test_lying_header_length_raises_a_project_error(pristine, tmp_path, length, header):
    folder = _copy(pristine, tmp_path, "length")
    path = folder / "scalers" / "d2_w32.safetensors"
    path.write_bytes(struct.pack("<Q", length) + header)
    with pytest.raises(SweetHubError):
        SweetTemplate.from_pretrained(folder)
