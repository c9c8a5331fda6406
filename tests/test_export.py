"""Using an encoder elsewhere: safetensors round trip, TorchScript and ONNX graphs equal to eager,
Parquet features, image-text towers, and the experiment trackers (MLflow to a local store).

One short SimCLR run on digits (evaluated, logged to csv, tensorboard and mlflow) serves the module.
"""

import importlib.util
import json

import numpy as np
import pytest
import torch

import reprlearn
from reprlearn.cli import main
from reprlearn.errors import ReprlearnError
from reprlearn.export import export_graph, load_safetensors, onnx_max_error, save_safetensors
from reprlearn.nets import create_backbone
from reprlearn.nets.encoder import Encoder

RUN = dict(data="digits", epochs=1, batch_size=128, warmup_epochs=0, progress=False, eval_max_train=500)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    trackers = "csv,tensorboard" + (",mlflow" if importlib.util.find_spec("mlflow") else "")  # an optional extra
    return reprlearn.train("simclr", out=root / "simclr", logger=trackers, **RUN)


def images(n, channels=1, size=8, seed=1):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def test_safetensors_round_trip_gives_identical_features(run, tmp_path):
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "enc.safetensors")]) == 0
    x = images(37)
    with torch.no_grad():
        want = reprlearn.load(run)(x)
        got = reprlearn.load(tmp_path / "enc.safetensors")(x)
    assert torch.equal(got, want)
    meta = json.loads((tmp_path / "enc.safetensors.json").read_text())
    assert meta["backbone"] == "cnn" and meta["in_channels"] == 1 and meta["image_size"] == 8
    assert meta["mean"] == pytest.approx(reprlearn.load(run).mean.flatten().tolist())
    assert not (tmp_path / "enc.torchvision.safetensors").exists()  # cnn has no counterpart


def test_safetensors_export_of_a_mapped_backbone_writes_the_reference_copy(tmp_path):
    encoder = Encoder(create_backbone("resnet18", in_channels=1, image_size=16), [0.3], [0.2]).eval()
    meta = {"format": "reprlearn-encoder", "backbone": "resnet18", "backbone_options": {}, "in_channels": 1,
            "image_size": 16, "mean": [0.3], "std": [0.2]}
    written = save_safetensors(encoder, meta, tmp_path / "r.safetensors")
    assert tmp_path / "r.torchvision.safetensors" in written
    from safetensors.torch import load_file

    ref = load_file(str(tmp_path / "r.torchvision.safetensors"))
    assert "conv1.weight" in ref and "layer4.1.bn2.running_var" in ref
    x = images(3, size=16)
    with torch.no_grad():
        assert torch.equal(load_safetensors(tmp_path / "r.safetensors")(x), encoder(x))
    with pytest.raises(ReprlearnError, match="torchvision copy"):
        load_safetensors(tmp_path / "r.torchvision.safetensors")


def test_torchscript_output_equals_eager_at_another_batch_size(run, tmp_path):
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "enc.pt")]) == 0
    graph = torch.jit.load(str(tmp_path / "enc.pt"))
    encoder = reprlearn.load(run)
    for n in (1, 9):  # traced on 2 images
        x = images(n)
        with torch.no_grad():
            assert torch.allclose(graph(x), encoder(x), atol=1e-6, rtol=0)


def test_a_failed_graph_check_leaves_the_earlier_export(run, tmp_path, monkeypatch):
    """A graph is written to a hidden file, checked there, and only then renamed over --out."""
    import reprlearn.export as export

    out = tmp_path / "enc.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    before = out.read_bytes()
    monkeypatch.setattr(export, "torchscript_max_error", lambda *a: 1.0)  # as if the graph were wrong
    with pytest.raises(ReprlearnError, match="differs from PyTorch"):
        export.export_towers([("", reprlearn.load(run), images(2), "images", "features")], "torchscript", out)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["enc.pt", "enc.pt.json"]


def test_torchscript_check_compares_values_at_another_batch_size(run, tmp_path):
    import reprlearn.export as export

    encoder = reprlearn.load(run)
    path = tmp_path / "g.pt"
    export.export_graph(encoder, images(2), path, "torchscript", "images", "features")
    assert export.torchscript_max_error(path, encoder, images(5)) < 1e-6

    class Doubled(torch.nn.Module):  # the same graph judged against another function
        def forward(self, x):
            return 2 * encoder(x)

    assert export.torchscript_max_error(path, Doubled(), images(5)) > 1e-3


def _onnx_matches(path, module, x):
    err = onnx_max_error(path, module, x)
    assert err is not None and err <= 1e-4, err


def test_onnx_output_equals_eager(run, tmp_path):
    for module in ("onnxruntime", "onnxscript", "onnx"):
        pytest.importorskip(module, reason=f"{module} is not installed (the extra reprlearn[export])")
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "enc.onnx")]) == 0
    encoder = reprlearn.load(run)
    for n in (1, 13):
        _onnx_matches(tmp_path / "enc.onnx", encoder, images(n))


def test_onnx_and_torchscript_of_a_vit(tmp_path):
    for module in ("onnxruntime", "onnxscript", "onnx"):
        pytest.importorskip(module, reason=f"{module} is not installed (the extra reprlearn[export])")
    torch.manual_seed(0)
    encoder = Encoder(create_backbone("vit-micro", in_channels=3, image_size=16), [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    encoder.eval()
    example = images(2, 3, 16)
    export_graph(encoder, example, tmp_path / "v.onnx", "onnx", "images", "features")
    export_graph(encoder, example, tmp_path / "v.pt", "torchscript", "images", "features")
    x = images(6, 3, 16, seed=5)
    _onnx_matches(tmp_path / "v.onnx", encoder, x)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(tmp_path / "v.pt"))(x), encoder(x), atol=1e-5)


def test_init_from_a_run_checkpoint_takes_its_backbone(run):
    from reprlearn.nets.interop import init_backbone

    fresh = create_backbone("cnn", in_channels=1, image_size=8)
    init_backbone("cnn", fresh, run / "checkpoints" / "last.ckpt")
    trained = reprlearn.load(run).backbone.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in fresh.state_dict().items())


def test_embed_writes_parquet_beside_npy(run, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "f.npy"
    assert main(["embed", str(run), "--data", "digits:test", "--out", str(out)]) == 0
    features = np.load(out)
    table = pq.read_table(tmp_path / "f.parquet")
    assert table.column_names == ["key", "embedding", "label"]
    assert table["key"].to_pylist() == [f"digits:test/{i}" for i in range(len(features))]
    assert np.array_equal(np.stack(table["embedding"].to_numpy(zero_copy_only=False)), features)
    assert table["label"].to_pylist()[:5] == reprlearn.api.load_source("digits:test").labels[:5].tolist()
    # the exported file embeds the same (reprlearn embed takes it in place of the run)
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "e.safetensors")]) == 0
    assert main(["embed", str(tmp_path / "e.safetensors"), "--data", "digits:test",
                 "--out", str(tmp_path / "g.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "g.npy"), features)


def test_bad_export_requests_are_one_line(run, tmp_path, capsys):
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "x.pt")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 2 and "FILE.onnx" in err[0] and "FILE.safetensors" in err[1]
    with pytest.raises(ReprlearnError, match="no reprlearn metadata"):
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
        reprlearn.load(tmp_path / "plain.safetensors")


# ---------------------------------------------------------------- image-text: both towers


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    return reprlearn.train("clip", out=tmp_path_factory.mktemp("clip") / "run", data="scenes:n=256", epochs=1,
                           batch_size=64, warmup_epochs=0, progress=False, eval=False, text_layers=1, text_width=32,
                           embed_dim=32, vocab_size=400, context_length=24, logger="csv")


def test_clip_exports_both_towers_and_the_tokenizer(clip_run, tmp_path):
    for module in ("onnxruntime", "onnxscript", "onnx"):
        pytest.importorskip(module, reason=f"{module} is not installed (the extra reprlearn[export])")
    from reprlearn.runs import load_method
    from reprlearn.text import TextTokenizer

    assert main(["export", str(clip_run), "--format", "onnx", "--out", str(tmp_path / "clip.onnx")]) == 0
    assert main(["export", str(clip_run), "--format", "torchscript", "--out", str(tmp_path / "clip.pt")]) == 0
    method, cfg, info = load_method(clip_run)
    tokenizer = TextTokenizer.load(tmp_path / "clip.tokenizer.json")
    tokens = tokenizer.encode(["a red circle", "two blue squares", "a green triangle above a ring"], 24)
    assert torch.equal(tokens, method.tokenize(["a red circle", "two blue squares", "a green triangle above a ring"]))
    x = images(5, info.channels, info.image_size)
    with torch.no_grad():
        want_image, want_text = method.encode_image(x), method.encode_text(tokens)
        assert torch.allclose(torch.jit.load(str(tmp_path / "clip.text.pt"))(tokens), want_text, atol=1e-5)
        assert torch.allclose(torch.jit.load(str(tmp_path / "clip.pt"))(x), want_image, atol=1e-5)
    import onnxruntime as ort

    for path, inputs, want in ((tmp_path / "clip.onnx", x, want_image),
                               (tmp_path / "clip.text.onnx", tokens, want_text)):
        runtime = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = runtime.run(None, {runtime.get_inputs()[0].name: inputs.numpy()})
        assert np.abs(got - want.numpy()).max() <= 1e-4
    meta = json.loads((tmp_path / "clip.onnx.json").read_text())
    assert meta["context_length"] == 24 and meta["tokenizer"] == "clip.tokenizer.json"


# ---------------------------------------------------------------- trackers


def test_mlflow_run_holds_config_metrics_and_artifacts(run):
    pytest.importorskip("mlflow", reason="mlflow is not installed (the extra reprlearn[mlflow])")
    from mlflow.tracking import MlflowClient

    client = MlflowClient((run.parent / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("reprlearn")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == run.name
    assert found.data.params["method"] == "simclr" and found.data.params["epochs"] == "1"
    assert "options.temperature" in found.data.params
    eval_json = json.loads((run / "eval.json").read_text())
    assert found.data.metrics["eval/linear_top1"] == pytest.approx(eval_json["linear_top1"])
    assert any(k.startswith("train/loss") for k in found.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.yaml", "eval.json", "umap.png", "eval_table.txt"} <= artifacts


def test_tensorboard_gets_the_figures_and_tables(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert "figures/umap" in events.Tags()["images"]
    assert any(t.startswith("eval/table") for t in events.Tags()["tensors"])


def test_a_tracker_that_is_not_installed_is_one_line(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ReprlearnError, match=r"--logger wandb needs wandb.*reprlearn\[wandb\]") as e:
        reprlearn.train("simclr", out=tmp_path / "r", logger="csv,wandb", **RUN)
    assert "\n" not in str(e.value) and not (tmp_path / "r").exists()  # refused before the run folder
    with pytest.raises(ReprlearnError, match="expected a comma list of csv, tensorboard, mlflow, wandb"):
        reprlearn.train("simclr", out=tmp_path / "r", logger="csv,neptune", **RUN)
