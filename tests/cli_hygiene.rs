//! What a user sees around the computing: interrupts leave no files behind, stale temporary
//! files of killed runs are cleaned up, unwritable outputs are refused before any work, stderr
//! carries no driver noise, and the repository points only at documents it contains.

use relu_fpt::data::write_npy_f32;
use relu_fpt::network::{Layer, Network};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relu-fpt"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Names in `dir` that start with a dot (temporary outputs are hidden files).
fn hidden_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// A wide network, so that predicting a few hundred thousand rows takes seconds.
fn slow_model(d: usize) -> Network {
    let widths = [d, 512, 512, 1];
    let layers = widths
        .windows(2)
        .map(|w| {
            let weights = (0..w[0] * w[1])
                .map(|i| ((i % 7) as f64 - 3.0) / (w[0] as f64))
                .collect();
            Layer::new(w[0], w[1], weights, vec![0.01; w[1]]).unwrap()
        })
        .collect();
    Network::new(d, layers).unwrap()
}

fn interrupt(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[test]
fn sigint_and_sigterm_during_predict_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = 32;
    let rows = 300_000;
    let x: Vec<f32> = (0..rows * d)
        .map(|i| ((i % 13) as f32 - 6.0) / 6.0)
        .collect();
    let x_path = dir.path().join("x.npy");
    write_npy_f32(&x_path, &[rows, d], &x).unwrap();
    let model_path = dir.path().join("model.json");
    slow_model(d).save(&model_path).unwrap();
    let out = dir.path().join("p.npy");

    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let mut child = bin()
            .args(["predict", "--backend", "cpu", "--model"])
            .arg(&model_path)
            .arg("--x")
            .arg(&x_path)
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the output is being written (its temporary file exists), then interrupt.
        let started = Instant::now();
        while !hidden_entries(dir.path())
            .iter()
            .any(|n| n.starts_with(".p.npy.tmp-"))
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "predict never started writing"
            );
            if let Some(status) = child.try_wait().unwrap() {
                panic!("predict finished before it could be interrupted: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        interrupt(child.id(), signal);
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(code), "{signal}: {}", stderr(&o));
        assert!(stderr(&o).contains("interrupted"), "{}", stderr(&o));
        assert!(hidden_entries(dir.path()).is_empty(), "{signal}");
        assert!(!out.exists(), "{signal}: no partial output");
    }
}

#[test]
fn stale_temporary_files_of_killed_runs_are_removed_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    std::fs::create_dir_all(&out).unwrap();
    // What SIGKILL leaves: a staging directory and a temporary npy of a process that is gone
    // (process ids above the kernel's pid_max, at most 2^22, cannot be running).
    let stale_dir = out.join(".relu-fpt-generate.tmp-99999999-0");
    std::fs::create_dir_all(&stale_dir).unwrap();
    std::fs::write(stale_dir.join("x.npy"), b"partial").unwrap();
    let o = bin()
        .args([
            "generate",
            "--teacher",
            "fan",
            "--d",
            "8",
            "--n",
            "500",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stale_dir.exists());
    assert!(stderr(&o).contains("interrupted run"), "{}", stderr(&o));
    assert!(hidden_entries(&out).is_empty());

    let stale_npy = dir.path().join(".p.npy.tmp-99999999-3");
    std::fs::write(&stale_npy, b"partial").unwrap();
    let model = dir.path().join("teacher.json");
    std::fs::copy(out.join("teacher.json"), &model).unwrap();
    let o = bin()
        .args(["predict", "--backend", "cpu", "--model"])
        .arg(&model)
        .arg("--x")
        .arg(out.join("x.npy"))
        .arg("--out")
        .arg(dir.path().join("p.npy"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stale_npy.exists());
    assert!(dir.path().join("p.npy").exists());
}

#[test]
fn unwritable_outputs_are_refused_before_any_computing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("model.json");
    // 10^8 samples: learning them would take many minutes, so a quick exit shows the check
    // came first.
    for (cmd, flag) in [
        ("learn", "--out"),
        ("subspace", "--out"),
        ("subspace", "--plot"),
    ] {
        let mut args = vec![
            cmd,
            "--teacher",
            "parity",
            "--d",
            "64",
            "--n",
            "100000000",
            "--backend",
            "cpu",
        ];
        let ok_out = dir.path().join("ok.json");
        let (out, plot) = if flag == "--out" {
            (missing.to_str().unwrap(), None)
        } else {
            (ok_out.to_str().unwrap(), Some(missing.to_str().unwrap()))
        };
        args.extend(["--out", out]);
        if let Some(p) = plot {
            args.extend(["--plot", p]);
        }
        let started = Instant::now();
        let o = bin().args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{cmd} {flag}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(flag) && err.contains("does not exist"),
            "{cmd}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{cmd} {flag} computed before refusing"
        );
    }
    // A directory given where a file is expected.
    let o = bin()
        .args([
            "learn",
            "--teacher",
            "fan",
            "--d",
            "8",
            "--n",
            "1000",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
}

#[test]
fn no_window_system_noise_on_stderr_without_xdg_runtime_dir() {
    let o = bin()
        .arg("devices")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.contains("XDG_RUNTIME_DIR"), "driver noise: {err}");
    // The adapter query did run (lavapipe in CI).
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("adapter"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn no_window_system_noise_when_auto_opens_the_adapter() {
    // --backend auto asks for an adapter through GpuContext::new, not through `devices`.
    let dir = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["subspace", "--teacher", "random", "--d", "8", "--k", "2"])
        .args([
            "--n",
            "4000",
            "--refine-steps",
            "0",
            "--backend",
            "auto",
            "--out",
        ])
        .arg(dir.path().join("s.json"))
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.contains("XDG_RUNTIME_DIR"), "driver noise: {err}");
}

/// Every subcommand path (`learn`, `bench moments`, ...) listed by the help texts.
fn subcommands(prefix: &[String]) -> Vec<Vec<String>> {
    let o = bin().args(prefix).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut out = vec![prefix.to_vec()];
    let Some(list) = help.split("Commands:\n").nth(1) else {
        return out;
    };
    for line in list.lines().take_while(|l| l.starts_with("  ")) {
        let name = line.split_whitespace().next().unwrap();
        if name != "help" {
            let mut path = prefix.to_vec();
            path.push(name.to_string());
            out.extend(subcommands(&path));
        }
    }
    out
}

/// `docs/...` paths named in `text` (up to the first character that cannot be in a file name).
fn docs_paths(text: &str) -> Vec<String> {
    text.match_indices("docs/")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c))
                .collect::<String>()
                .trim_end_matches(['.', '/'])
                .to_string()
        })
        .filter(|p| p.len() > "docs/".len())
        .collect()
}

#[test]
fn help_texts_and_repository_point_only_at_documents_it_contains() {
    // The working spec the project was built from is not shipped; nothing may send a user there.
    let outside = concat!("ALGORITHM", ".md");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts: Vec<(String, String)> = Vec::new();
    let commands = subcommands(&[]);
    assert!(commands.len() >= 8, "{commands:?}");
    for cmd in commands {
        let o = bin().args(&cmd).arg("--help").output().unwrap();
        assert!(o.status.success(), "{cmd:?} --help");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        texts.push((format!("relu-fpt {} --help", cmd.join(" ")), text));
    }
    fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                out.push((p.display().to_string(), text));
            }
        }
    }
    for dir in [
        "src", "tests", "docs", "scripts", "shaders", "benches", "python",
    ] {
        walk(&root.join(dir), &mut texts);
    }
    for file in ["README.md", "Cargo.toml", ".ci/run"] {
        let p = root.join(file);
        texts.push((file.to_string(), std::fs::read_to_string(p).unwrap()));
    }
    for (name, text) in &texts {
        assert!(!text.contains(outside), "{name} mentions {outside}");
        for doc in docs_paths(text) {
            assert!(
                root.join(&doc).exists(),
                "{name} points at {doc}, not in the repository"
            );
        }
    }
}
