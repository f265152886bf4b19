"""The corpus of bad files (issue 19 items 9, 10, 16, 17, 19): a ``save_pretrained`` folder's
config.json and weights, an exported file's metadata and graph, export destinations and hub
sources. Every case must end with exit status 2 and exactly one line on stderr that names the
file and the key at fault, with no traceback, and must leave every file it was given as it was.

A case is one row of :data:`CASES`: ``(id, argv, fragment)``, as in ``test_bad_inputs.py``.
``argv`` is a function of the case's folder - which holds a copy of the good files of
:func:`good_files` (``model/``, ``model.onnx``, ``a.png``) - that spoils one of them and
returns the command line after ``efficientmod``; ``fragment`` is a piece of the expected message.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from refusal import assert_refused
from synthetic_images import make_image_folder
from test_deploy import random_model

from efficientmod.cli import main
from efficientmod.preprocessing import Preprocessing

CLASSES = ["ant", "bee", "cow", "dog"]
INPUT = (3, 64, 64)  # the good files' input size: small, so each case runs fast


@pytest.fixture(scope="module")
def good_files(tmp_path_factory) -> Path:
    """A 4-class ``save_pretrained`` folder at 64 px, its ONNX export and an image."""
    folder = tmp_path_factory.mktemp("good")
    preprocessing = Preprocessing(INPUT, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    model = random_model("efficientmod_xxs", num_classes=len(CLASSES))
    model.save_pretrained(folder / "model", class_names=CLASSES, preprocessing=preprocessing)
    assert main(["export", str(folder / "model"), "-o", str(folder / "model.onnx")]) == 0
    Image.new("RGB", (80, 60), (200, 90, 30)).save(folder / "a.png")
    return folder


def predict(folder: Path, model: str) -> list[str]:
    return ["predict", str(folder / model), str(folder / "a.png")]


def config(edit: Callable[[dict], object] | bytes) -> Callable[[Path], list[str]]:
    """``model/config.json`` rewritten as ``edit(config)`` (or replaced by the bytes ``edit``)."""
    def build(folder: Path) -> list[str]:
        path = folder / "model" / "config.json"
        if isinstance(edit, bytes):
            path.write_bytes(edit)
        else:
            path.write_text(json.dumps(edit(json.loads(path.read_text()))))
        return predict(folder, "model")
    return build


def setting(key: str, value, section: str | None = None) -> Callable[[dict], dict]:
    """An edit of config.json (or of its ``section``, e.g. ``pretrained_cfg``) that sets ``key``."""
    def edit(values: dict) -> dict:
        (values[section] if section else values)[key] = value
        return values
    return edit


def without(key: str, section: str | None = None) -> Callable[[dict], dict]:
    def edit(values: dict) -> dict:
        del (values[section] if section else values)[key]
        return values
    return edit


def onnx_metadata(command: str = "predict", **changes) -> Callable[[Path], list[str]]:
    """``model.onnx`` with its ``metadata_props`` changed (a value of None removes the key), then
    ``predict`` it (or ``eval`` it on a folder of the four classes)."""
    def build(folder: Path) -> list[str]:
        import onnx

        from efficientmod.export import read_onnx_metadata

        path = folder / "model.onnx"
        values = {**read_onnx_metadata(path), **changes}
        proto = onnx.load(str(path))
        del proto.metadata_props[:]
        for key, value in values.items():
            if value is not None:
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, json.dumps(value)
        onnx.save(proto, str(path))
        if command == "eval":
            make_image_folder(folder / "data", classes=CLASSES, train_per_class=1, val_per_class=1, size=8)
            return ["eval", "--model", "efficientmod_xxs", "--checkpoint", str(path), "--data", str(folder / "data"),
                    "--workers", "0"]
        return predict(folder, "model.onnx")
    return build


def spoiled(name: str, spoil: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    """``predict`` on ``name`` (``model`` or ``model.onnx``) after ``spoil(folder / name)``."""
    def build(folder: Path) -> list[str]:
        spoil(folder / name)
        return predict(folder, name)
    return build


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def export_to(output: str, *argv: str, make: Callable[[Path], None] = lambda folder: None) -> Callable[[Path], list]:
    """``export model -o OUTPUT`` (relative to the case's folder) after ``make(folder)``."""
    def build(folder: Path) -> list[str]:
        make(folder)
        return ["export", str(folder / "model"), "-o", str(folder / output), *argv]
    return build


CONFIG = "model/config.json"
CONFIG_CASES = [  # issue 19 items 9 and 16: a save_pretrained folder's config.json
    ("config num_classes 3000000", config(setting("num_classes", 3_000_000)),
     f"{CONFIG}: num_classes must be an integer from 0 to 100000, got 3000000"),
    ("config num_classes 1e8", config(setting("num_classes", 1e8)), "num_classes must be an integer"),
    ("config num_classes -1", config(setting("num_classes", -1)), "num_classes must be an integer"),
    ("config num_classes string", config(setting("num_classes", "4")), "got '4'"),
    ("config num_classes true", config(setting("num_classes", True)), "got True"),
    ("config input_size 60000", config(setting("input_size", [3, 60000, 60000], "pretrained_cfg")),
     f"{CONFIG}: pretrained_cfg: preprocessing: input_size 60000x60000 is outside 1 to 4096"),
    ("config input_size four values", config(setting("input_size", [3, 64, 64, 64], "pretrained_cfg")),
     "input_size must be three integers"),
    ("config input_size 99 channels", config(setting("input_size", [99, 64, 64], "pretrained_cfg")),
     "input_size has 99 channels"),
    ("config no architecture", config(without("architecture")), f"{CONFIG}: architecture must be a model name"),
    ("config architecture number", config(setting("architecture", 7)), "architecture must be a model name, got 7"),
    ("config architecture unknown", config(setting("architecture", "bogus_net")), f"{CONFIG}: architecture: "),
    ("config top-level list", config(lambda values: []), f"{CONFIG}: must hold a JSON object, got a list"),
    ("config top-level string", config(lambda values: "model"), "must hold a JSON object, got a str"),
    ("config not json", config(b'{"architecture": '), f"{CONFIG}: not a JSON file"),
    ("config not utf-8", config(b"\xff\xfe\x00"), f"{CONFIG}: not a JSON file"),
    ("config model_args list", config(setting("model_args", [])), f"{CONFIG}: model_args must be a JSON object"),
    ("config model_args img_size 60000", config(setting("model_args", {"img_size": 60000})),
     "model_args.img_size = 60000 is outside 0 to 4096"),
    ("config model_args in_chans 1e6", config(setting("model_args", {"in_chans": 1_000_000})),
     "model_args.in_chans = 1000000 is outside"),
    ("config model_args nested object", config(setting("model_args", {"in_chans": {"a": 1}})),
     "model_args.in_chans must be a number, string or short list"),
    ("config model_args unknown", config(setting("model_args", {"bogus": 1})),
     f"{CONFIG}: model_args do not fit efficientmod_xxs"),
    ("config interpolation bogus", config(setting("interpolation", "bogus", "pretrained_cfg")),
     "interpolation 'bogus' is not one of"),
    ("config interpolation number", config(setting("interpolation", 3, "pretrained_cfg")),
     "interpolation must be a string"),
    ("config mean empty", config(setting("mean", [], "pretrained_cfg")), "mean has 0 values for 3 channel(s)"),
    ("config mean nan", config(setting("mean", [float("nan")] * 3, "pretrained_cfg")), "is not finite"),
    ("config std zero", config(setting("std", [0, 0, 0], "pretrained_cfg")), "std [0.0, 0.0, 0.0] must be > 0"),
    ("config crop_pct 2", config(setting("crop_pct", 2, "pretrained_cfg")), "crop_pct 2.0 must be in (0, 1]"),
    ("config pretrained_cfg list", config(setting("pretrained_cfg", [])), "preprocessing must be a mapping"),
    ("config pretrained_cfg missing", config(without("pretrained_cfg")), f"{CONFIG}: no pretrained_cfg"),
    ("config no mean", config(without("mean", "pretrained_cfg")), "pretrained_cfg: preprocessing lacks mean"),
    ("config label_names string", config(setting("label_names", "abcd")),
     "label_names: class_names must be a list of strings, got str"),
    ("config label_names count", config(setting("label_names", ["a", "b", "c"])),
     "3 class names for a model with 4 classes"),
    ("config label_names numbers", config(setting("label_names", [1, 2, 3, 4])), "class_names must all be strings"),
    ("config missing", spoiled("model", lambda path: (path / "config.json").unlink()), "(no config.json)"),
    ("weights missing", spoiled("model", lambda path: (path / "model.safetensors").unlink()), "model.safetensors"),
    ("weights truncated", spoiled("model", lambda path: truncate(path / "model.safetensors")),
     "as a safetensors file"),
]

ONNX_CASES = [  # issue 19 items 9, 10 and 16: an exported file's metadata and graph
    ("onnx 1000 classes on 4 logits", onnx_metadata(num_classes=1000, class_names=None),
     "model.onnx: the metadata declares 1000 classes, the graph gives outputs of shape [1, 4]"),
    ("eval onnx 1000 classes on 4 logits", onnx_metadata(num_classes=1000, class_names=None, command="eval"),
     "model.onnx: the metadata declares 1000 classes, the graph gives outputs of shape [1, 4]"),
    ("onnx 5 classes on 4 logits", onnx_metadata(num_classes=5, class_names=list("abcde")),
     "the metadata declares 5 classes"),
    ("onnx class_names string", onnx_metadata(class_names="abcd"), "class_names must be a list of strings, got str"),
    ("onnx class_names count", onnx_metadata(class_names=["a"]), "1 class names for a model with 4 classes"),
    ("onnx class_names numbers", onnx_metadata(class_names=[0, 1, 2, 3]), "class_names must all be strings"),
    ("onnx mean nan", onnx_metadata(mean=[float("nan")] * 3),
     "model.onnx: preprocessing: mean [nan, nan, nan] is not finite"),
    ("onnx std zero", onnx_metadata(std=[0, 0, 0]), "model.onnx: preprocessing: std [0.0, 0.0, 0.0] must be > 0"),
    ("onnx std infinite", onnx_metadata(std=[float("inf")] * 3), "std [inf, inf, inf] is not finite"),
    ("onnx no mean", onnx_metadata(mean=None), "model.onnx: preprocessing lacks mean"),
    ("onnx input_size string", onnx_metadata(input_size="3x64x64"), "model.onnx: input_size must be a short list"),
    ("onnx input_size 60000", onnx_metadata(input_size=[3, 60000, 60000]), "input_size 60000x60000 is outside"),
    ("onnx input_size not the graph's", onnx_metadata(input_size=[3, 32, 32]),
     "model.onnx: the graph does not take the input_size [3, 32, 32] of its metadata"),
    ("onnx channels not the graph's", onnx_metadata(input_size=[1, 64, 64], mean=[0.5], std=[0.5]),
     "the graph does not take the input_size [1, 64, 64]"),
    ("onnx num_classes 0", onnx_metadata(num_classes=0), "num_classes must be an integer from 1 to 100000, got 0"),
    ("onnx num_classes 3000000", onnx_metadata(num_classes=3_000_000), "got 3000000"),
    ("onnx num_classes string", onnx_metadata(num_classes="4"), "got '4'"),
    ("onnx no producer", onnx_metadata(producer=None), "model.onnx: no efficientmod metadata"),
    ("onnx architecture empty", onnx_metadata(architecture=""), "architecture must be a name"),
    ("onnx interpolation bogus", onnx_metadata(interpolation="bogus"), "interpolation 'bogus' is not one of"),
    ("onnx crop_pct 0", onnx_metadata(crop_pct=0), "crop_pct 0.0 must be in (0, 1]"),
    ("onnx zero bytes", spoiled("model.onnx", lambda path: path.write_bytes(b"")),
     "model.onnx as an ONNX model: the file is empty"),
    ("onnx truncated", spoiled("model.onnx", truncate), "model.onnx as an ONNX model"),
    ("onnx missing", spoiled("model.onnx", Path.unlink), "onnx file not found: "),
]

EXPORT_CASES = [  # issue 19 item 17: where and how an export is written
    ("export -o existing folder", export_to("out.onnx", make=lambda folder: (folder / "out.onnx").mkdir()),
     "out.onnx is a folder: name the file to write in it"),
    ("export -o under a file", export_to("a.png/out.onnx"), "a.png is a file, not a folder"),
    ("export -o deep under a file", export_to("a.png/x/y/out.onnx"), "a.png is a file, not a folder"),
    ("export xml -o under a file", export_to("a.png/out.xml"), "a.png is a file, not a folder"),
    ("export opset 99", export_to("out.onnx", "--opset", "99"), "opset 99 is newer than torch.onnx writes: use 17 to"),
    ("export opset 21", export_to("out.onnx", "--opset", "21"), "opset 21 is newer"),
    ("export opset 16", export_to("out.onnx", "--opset", "16"), "opset 16 is too old: use 17 to"),
    ("export opset -1", export_to("out.onnx", "--opset", "-1"), "opset -1 is too old"),
]

def train_from(*argv: str) -> Callable[[Path], list[str]]:
    """A small ``train --synthetic`` run into ``out/`` with ``argv`` (``{folder}`` filled in) at fault."""
    def build(folder: Path) -> list[str]:
        return ["train", "--synthetic", "--model", "efficientmod_xxs", "--epochs", "1", "--batch-size", "2",
                "--img-size", "32", "--num-classes", "4", "--benchmark-steps", "1", "--output", str(folder / "out"),
                *[arg.format(folder=folder) for arg in argv]]
    return build


def predict_with(checkpoint: str, spoil: str | None = None) -> Callable[[Path], list[str]]:
    """``predict efficientmod_xxs --checkpoint CHECKPOINT`` (``{folder}`` filled in), the file
    ``spoil`` (relative to the case's folder) deleted first."""
    def build(folder: Path) -> list[str]:
        if spoil:
            (folder / spoil).unlink()
        return ["predict", "efficientmod_xxs", "--checkpoint", checkpoint.format(folder=folder), str(folder / "a.png")]
    return build


WEIGHTS_CASES = [  # issue 19 item 19: weights named on the command line
    ("predict checkpoint /dev/zero", predict_with("/dev/zero"), "/dev/zero is not a checkpoint file"),
    ("predict checkpoint missing", predict_with("{folder}/best.pth"), "checkpoint not found: "),
    ("predict checkpoint an image", predict_with("{folder}/a.png"), "a.png as a weights-only checkpoint"),
    ("predict checkpoint folder without config", predict_with("{folder}"), "is not a save_pretrained folder"),
    ("predict checkpoint folder without weights", predict_with("{folder}/model", spoil="model/model.safetensors"),
     "model.safetensors (no such file or save_pretrained folder)"),
    ("train pretrained hub id", train_from("--pretrained", "user/repo"),
     "checkpoint not found: user/repo (no such file or save_pretrained folder - a Hugging Face hub id is not "
     "downloaded here"),
    ("train pretrained /dev/zero", train_from("--pretrained", "/dev/zero"), "/dev/zero is not a checkpoint file"),
]

def openvino_ir(xml: bytes, bin_: bytes | None) -> Callable[[Path], list[str]]:
    """``predict`` on an OpenVINO IR ``m.xml`` holding ``xml``, beside ``m.bin`` holding ``bin_`` (None: none)."""
    def build(folder: Path) -> list[str]:
        pytest.importorskip("openvino", reason="needs efficientmod[openvino]")
        (folder / "m.xml").write_bytes(xml)
        if bin_ is not None:
            (folder / "m.bin").write_bytes(bin_)
        return predict(folder, "m.xml")
    return build


TRUNCATED_XML = b'<?xml version="1.0"?>\n<net name="model" version="11"><layers>'
OPENVINO_CASES = [  # issue 19 item 16: OpenVINO IR files that are cut short
    ("openvino truncated xml", openvino_ir(TRUNCATED_XML, b""), "m.xml as an OpenVINO IR"),
    ("openvino no bin", openvino_ir(TRUNCATED_XML, None), "m.xml: its weights file "),
    ("openvino empty xml", openvino_ir(b"", b""), "m.xml as an OpenVINO IR"),
]

CASES = CONFIG_CASES + ONNX_CASES + EXPORT_CASES + WEIGHTS_CASES + OPENVINO_CASES


@pytest.mark.parametrize("argv, fragment", [pytest.param(argv, fragment, id=name) for name, argv, fragment in CASES])
def test_bad_file_is_one_line_exit_2(good_files, tmp_path, capsys, argv, fragment):
    shutil.copytree(good_files, tmp_path, dirs_exist_ok=True)
    argv = argv(tmp_path)
    line = assert_refused(argv, fragment, tmp_path, capsys)
    assert line.startswith(f"efficientmod {argv[0]}: error: ")


def test_corpus_ids_are_unique():
    names = [name for name, _, _ in CASES]
    assert len(names) == len(set(names)) and len(names) >= 60


def test_good_files_are_accepted(good_files, capsys):
    """The files every case spoils are good as they are: a refusal is the case's doing."""
    for model in ("model", "model.onnx"):
        status = main(predict(good_files, model))
        captured = capsys.readouterr()
        assert status == 0, captured.err
        assert sum(f"%  {name}" in captured.out for name in CLASSES) == 4, captured.out  # top-5 of 4 classes


def _spoiled_copy(good_files: Path, folder: Path, edit: Callable[[dict], dict]) -> Path:
    shutil.copytree(good_files / "model", folder)
    path = folder / "config.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return folder


SIZE_EDITS = {  # issue 19 item 9: sizes a config.json asks to allocate
    "num_classes 3000000": setting("num_classes", 3_000_000),
    "num_classes 1e8": setting("num_classes", 100_000_000),
    "img_size 60000": setting("model_args", {"img_size": 60000}),
    "input_size 60000": setting("input_size", [3, 60000, 60000], "pretrained_cfg"),
}


@pytest.mark.parametrize("edit", list(SIZE_EDITS.values()), ids=list(SIZE_EDITS))
def test_config_sizes_are_refused_before_a_model_is_built(good_files, tmp_path, monkeypatch, edit):
    import efficientmod.models.pretrained as pretrained

    def fail(*args, **kwargs):
        raise AssertionError("a model was built from a config.json that asks for too much")

    monkeypatch.setattr(pretrained, "create_model", fail)
    folder = _spoiled_copy(good_files, tmp_path / "model", edit)
    with pytest.raises(ValueError, match=r"config\.json: .*(is outside|from 0 to 100000)"):
        pretrained.from_pretrained(folder)


TIMM_EDITS = {  # the same sizes in the pretrained_cfg that timm reads from a local-dir: folder
    "num_classes 3000000": (lambda c: {**setting("num_classes", 3_000_000, "pretrained_cfg")(c),
                                       "num_classes": 3_000_000}, "pretrained_cfg num_classes 3000000 is outside"),
    "input_size 60000": (setting("input_size", [3, 60000, 60000], "pretrained_cfg"),
                         "pretrained_cfg input_size 60000 is outside 1 to 4096"),
}


@pytest.mark.parametrize("edit, message", list(TIMM_EDITS.values()), ids=list(TIMM_EDITS))
def test_timm_local_dir_sizes_are_refused_before_a_model_is_built(good_files, tmp_path, monkeypatch, edit, message):
    import timm

    import efficientmod.models.registry as registry

    def fail(*args, **kwargs):
        raise AssertionError("timm built a model from a pretrained_cfg that asks for too much")

    monkeypatch.setattr(registry, "build_model_with_cfg", fail)
    folder = _spoiled_copy(good_files, tmp_path / "model", edit)
    with pytest.raises(ValueError, match=message):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_python_sizes_are_bounded_too():
    import efficientmod

    with pytest.raises(ValueError, match="num_classes 3000000 is outside 0 to 100000"):
        efficientmod.create_model("efficientmod_xxs", num_classes=3_000_000)
    with pytest.raises(ValueError, match="in_chans 100 is outside 1 to 16"):
        efficientmod.create_model("efficientmod_xxs", in_chans=100)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline (what huggingface_hub reads at call time): no case
    may reach the network."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_url_is_one_clear_error(offline_hub, tmp_path, monkeypatch):
    import efficientmod
    from efficientmod.models.hub import WeightsNotAvailableError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # torch.hub's download folder
    url = f"http://127.0.0.1:{_closed_port()}/weights.pth"
    with pytest.raises(WeightsNotAvailableError, match=f"cannot download pretrained weights from {url}: "):
        efficientmod.create_model("efficientvit_m0", pretrained=url)


@pytest.mark.parametrize("source", ["user/../../etc", "user/re po", "a/b/c"])
def test_a_source_that_is_no_path_nor_hub_id_is_refused(offline_hub, source):
    import efficientmod

    with pytest.raises(ValueError, match="no such checkpoint file or save_pretrained folder, and not a Hugging Face"):
        efficientmod.create_model("efficientvit_m0", pretrained=source)


def test_offline_hub_id_names_the_cache_fast(offline_hub):
    import time

    import efficientmod
    from efficientmod.models.hub import WeightsNotAvailableError

    start = time.monotonic()
    with pytest.raises(WeightsNotAvailableError, match=f"not in the cache {offline_hub} and HF_HUB_OFFLINE is set"):
        efficientmod.create_model("efficientvit_m0", pretrained="user/repo")
    with pytest.raises(WeightsNotAvailableError, match="hf download timm/efficientvit_m0"):
        efficientmod.create_model("efficientvit_m0", pretrained=True)
    assert time.monotonic() - start < 10  # no retries (60 s of them before)


def test_init_from_a_checkpoint_file_names_what_it_expects(tmp_path):
    from efficientmod.classify.qat import load_float_model

    (tmp_path / "best.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="best.pth is a file: name the run folder that holds model/"):
        load_float_model(tmp_path / "best.pth")
    with pytest.raises(FileNotFoundError, match="a run folder holding model/, or a save_pretrained model/ folder"):
        load_float_model(tmp_path / "nowhere")
