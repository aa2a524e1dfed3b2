//! Running the docs' own lines: a fenced block found after a marker, run
//! in bash in a scratch copy of the repository's config, examples and SDK.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The fenced block of `lang` that follows `marker` in `text`.
pub fn block_after(text: &str, marker: &str, lang: &str) -> String {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in the doc"));
    let rest = &text[at..];
    let open = format!("```{lang}\n");
    let start = rest.find(&open).expect("a fenced block after the marker") + open.len();
    let len = rest[start..].find("```").expect("the block ends");
    rest[start..start + len].to_string()
}

pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "__pycache__" || name == "build" || name.to_string_lossy().ends_with(".egg-info")
        {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        if e.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A scratch directory laid out as the repository is, for what the lines use.
pub fn workdir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "first-hour-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    for sub in ["config", "examples", "sdk/python"] {
        copy_tree(&Path::new(ROOT).join(sub), &dir.join(sub));
    }
    let _ = std::fs::remove_file(dir.join("config/commander.key"));
    dir
}

/// Runs `script` in bash in `dir` with the test's environment, in its own
/// process group (killed when done, with whatever it left in the
/// background). Its output goes to files, read once bash exits, so that a
/// background process holding them open cannot hold the test.
pub async fn bash(dir: &Path, env: &[(&str, String)], script: &str) -> std::process::Output {
    let (out, err) = (dir.join("bash.stdout"), dir.join("bash.stderr"));
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("bash runs");
    let pgid = child.id().expect("running");
    let status = tokio::time::timeout(std::time::Duration::from_secs(180), child.wait()).await;
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    let status = status
        .expect("the lines finish within 3 minutes")
        .expect("bash ran");
    std::process::Output {
        status,
        stdout: std::fs::read(&out).unwrap_or_default(),
        stderr: std::fs::read(&err).unwrap_or_default(),
    }
}
