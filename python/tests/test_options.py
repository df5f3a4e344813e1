"""The command line and the estimator are two front ends of one options model (the library's
``LearnOptions``): the same options give the same model, and each option means what the
library says it means."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import relu_fpt
from relu_fpt import _core


def _binary():
    binary = os.environ.get("RELU_FPT_BIN") or shutil.which("relu-fpt")
    if not binary:
        pytest.skip("the relu-fpt command is not built (set RELU_FPT_BIN)")
    return binary


def test_the_same_options_give_the_same_model(tmp_path, teacher_data):
    X, y, X_test, _, _ = teacher_data
    X, y = X[:6000], y[:6000]
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", y)
    # Every option that changes the configuration, set away from its default (passes given
    # are not cut to a number of row reads, in both).
    est = relu_fpt.ReluNetRegressor(
        random_state=7, hidden=(3,), budget=32, max_dim=6, polish_epochs=3, descent_epochs=4,
        deep_widths=(8, 8), deep_epochs=2, spare_rows=1, refine_steps=1,
        validation_fraction=0.25, max_train_rows=3000, backend="cpu",
    ).fit(X, y)
    run = subprocess.run(
        [_binary(), "learn", "--backend", "cpu", "--x", str(tmp_path / "x.npy"),
         "--y", str(tmp_path / "y.npy"), "--seed", "7", "--hidden", "3", "--budget", "32",
         "--max-dim", "6", "--polish-epochs", "3", "--descent-epochs", "4",
         "--deep-widths", "8,8", "--deep-epochs", "2", "--spare-rows", "1",
         "--refine-steps", "1", "--validation", "0.25", "--max-train-rows", "3000",
         "--quiet", "--json", "--out", str(tmp_path / "m.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    model = relu_fpt.load(tmp_path / "m.json")
    assert model == est.model_
    assert model.to_json() == est.model_.to_json()
    np.testing.assert_array_equal(model.predict(X_test), est.model_.predict(X_test))
    report = json.loads(run.stdout)
    assert [s["stage"] for s in report["stages"]] == [s["stage"] for s in est.report_["stages"]]
    assert report["validation_mse"] == est.report_["validation_mse"]


def test_the_docstring_states_the_library_meaning():
    doc = relu_fpt.ReluNetRegressor.__doc__
    names = [n for n, _ in _core._learn_option_docs()]
    assert "polish_epochs" in names and "whiten" in names
    for name, meaning in _core._learn_option_docs():
        if name == "seed":
            continue  # random_state, sklearn's convention
        m = re.search(rf"^    {name} : .*\n((?:        .*\n)+)", doc, re.M)
        assert m, f"{name} is not documented"
        text = " ".join(m.group(1).replace("``", "`").split())
        assert text == meaning, name
