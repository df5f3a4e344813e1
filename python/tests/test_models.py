"""Network files, ONNX export checked with onnx and onnxruntime, subspace recovery, teachers."""

import os
import pickle
import shutil
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import relu_fpt
from relu_fpt import ReluNetRegressor

from conftest import FAST, principal_angle


def onnx_predict(path, X):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["y"], {"x": np.ascontiguousarray(X, dtype=np.float32)})
    return out


def check_onnx(path, network, X):
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    (inp,) = model.graph.input
    assert inp.name == "x" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[1].dim_value == network.input_dim
    out = onnx_predict(path, X)
    assert out.shape == (len(X), 1)
    want = network.predict(np.ascontiguousarray(X, dtype=np.float32)).astype(np.float64)
    scale = np.abs(want).max()
    # predict computes in f64 from the float32 input; the runtime computes in float32.
    np.testing.assert_allclose(out[:, 0], want, rtol=1e-5, atol=1e-5 * scale)
    return model


def test_onnx_reproduces_predict(tmp_path, teacher_data, fitted):
    _, _, X_test, _, teacher = teacher_data
    path = tmp_path / "model.onnx"
    fitted.to_onnx(path)
    model = check_onnx(path, fitted.model_, X_test)
    ops = [n.op_type for n in model.graph.node]
    # The compact model: the projection, then the small network.
    assert ops[0] == "MatMul" and ops[1:] == ["Gemm", "Relu"] * len(fitted.model_.hidden_widths) + ["Gemm"]
    np.testing.assert_allclose(
        onnx_predict(path, X_test)[:, 0], fitted.predict(X_test), rtol=1e-5,
        atol=1e-5 * np.abs(fitted.predict(X_test)).max(),
    )
    # A teacher (no projection, its own layer count) and the bytes the file holds.
    tpath = tmp_path / "teacher.onnx"
    teacher.to_onnx(str(tpath))
    check_onnx(tpath, teacher, X_test)
    assert tpath.read_bytes() == teacher.onnx_bytes()


def test_onnx_of_the_fallback_model(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((500, 4))
    est = ReluNetRegressor(**FAST).fit(X, rng.standard_normal(500))
    assert est.report_["fallback"] is not None
    path = tmp_path / "ridge.onnx"
    est.to_onnx(path)
    check_onnx(path, est.model_, X)


def test_cli_export_writes_the_same_model(tmp_path, fitted):
    binary = os.environ.get("RELU_FPT_BIN") or shutil.which("relu-fpt")
    if binary is None:
        pytest.skip("the relu-fpt command is not built (set RELU_FPT_BIN)")
    fitted.save(tmp_path / "model.json")
    out = tmp_path / "cli.onnx"
    run = subprocess.run(
        [binary, "export", "--model", str(tmp_path / "model.json"), "--format", "onnx",
         "--out", str(out)], capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    fitted.to_onnx(tmp_path / "py.onnx")
    assert out.read_bytes() == (tmp_path / "py.onnx").read_bytes()


def test_save_load_round_trip(tmp_path, teacher_data, fitted):
    _, _, X_test, _, _ = teacher_data
    path = tmp_path / "model.json"
    fitted.save(path)
    loaded = relu_fpt.load(path)
    assert loaded == fitted.model_
    np.testing.assert_array_equal(loaded.predict(X_test), fitted.model_.predict(X_test))
    assert relu_fpt.Network(path.read_text()) == loaded
    assert pickle.loads(pickle.dumps(loaded)) == loaded
    assert loaded.projection.shape == (fitted.report_["model_dimension"], 12)
    w, b = loaded.layers[0]
    assert w.shape == (loaded.hidden_widths[0], fitted.report_["model_dimension"])
    assert b.shape == (w.shape[0],)


def test_load_errors_name_the_file_and_field(tmp_path, fitted):
    with pytest.raises(OSError, match="missing.json"):
        relu_fpt.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(fitted.model_.to_json().replace('"input_dim": 12', '"input_dim": -1', 1))
    with pytest.raises(ValueError, match=r"bad\.json.*input_dim"):
        relu_fpt.load(bad)
    with pytest.raises(OSError, match="no-such-dir"):
        fitted.save(tmp_path / "no-such-dir" / "m.json")
    assert not (tmp_path / "no-such-dir").exists()


def test_find_subspace_methods(teacher_data):
    X, y, _, _, teacher = teacher_data
    _, _, vt = np.linalg.svd(teacher.layers[0][0])
    basis, report = relu_fpt.find_subspace(X, y, backend="cpu", random_state=0)
    assert basis.shape == (2, 12)
    np.testing.assert_allclose(basis @ basis.T, np.eye(2), atol=1e-9)
    # Twice the worst of random_state 0..9 (2.05e-3 rad).
    assert principal_angle(basis, vt[:2]) < 4.1e-3
    assert report["method"] == "filtered" and report["rounds"][0]["accepted"] >= 1
    paper, report = relu_fpt.find_subspace(X, y, method="paper", backend="cpu", random_state=0)
    assert paper.shape == (2, 12) and report["method"] == "paper"
    kinds = [r["kind"] for r in report["rounds"]]
    assert [r["accepted"] for r in report["rounds"] if r["kind"] == "label"] == [2, 0]
    # Then refine sweeps: each direction found again by a round conditioned on the other.
    assert set(kinds[2:]) <= {"refine"} and report["refine"] == []
    assert "found no direction" in report["stopped"]
    sir, report = relu_fpt.find_subspace(X, y, method="sir", dim=2, backend="cpu")
    assert sir.shape == (2, 12) and report["method"] == "sir"
    # The library's own messages come through as ValueError.
    with pytest.raises(ValueError, match="the phd baseline needs the dimension"):
        relu_fpt.find_subspace(X, y, method="phd", backend="cpu")
    with pytest.raises(ValueError, match=r"dim must be in 1\.\.=12 \(the input dimension\), got 13"):
        relu_fpt.find_subspace(X, y, method="sir", dim=13, backend="cpu")
    with pytest.raises(ValueError, match="method"):
        relu_fpt.find_subspace(X, y, method="pca")


def test_make_teacher_is_seeded_and_labels_are_the_teacher():
    X, y, teacher = relu_fpt.make_teacher("parity", d=8, k=2, n=1000, seed=5)
    assert X.shape == (1000, 8) and X.dtype == np.float32 and y.shape == (1000,)
    X2, y2, _ = relu_fpt.make_teacher("parity", d=8, k=2, n=1000, seed=5)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_allclose(teacher.predict(X), y, rtol=1e-6, atol=1e-6)
    noisy = relu_fpt.make_teacher("fan", d=8, n=1000, noise=0.5, seed=5)[1]
    assert np.std(noisy - relu_fpt.make_teacher("fan", d=8, n=1000, seed=5)[1]) > 0.4
    with pytest.raises(ValueError, match="kind"):
        relu_fpt.make_teacher("xor")
    with pytest.raises(ValueError, match="k"):
        relu_fpt.make_teacher("parity", d=8, k=3)
