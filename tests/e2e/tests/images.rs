//! The container images as a user's node would get them (`tests/images/build`): each
//! archive names its image as the chart does, runs as the non-root user it declares, and
//! its entrypoint really starts on the image's own root filesystem, with nothing from the
//! host (a binary that needs a shared library, or a Python package the app image lacks,
//! fails here).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step fails the test

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use apiworkload_e2e::repo_root;
use serde_json::Value;

/// Reference → archive, from `tests/images/build` (cached: only the first call builds).
fn images() -> &'static BTreeMap<String, PathBuf> {
    static IMAGES: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let out = Command::new(repo_root().join("tests/images/build"))
            .output()
            .expect("run tests/images/build");
        assert!(
            out.status.success(),
            "tests/images/build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(r, a)| (r.to_string(), PathBuf::from(a)))
            .collect()
    })
}

fn chart_image(values_key: &str) -> String {
    let chart = repo_root().join("charts/apiworkload-operator");
    let values: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap())
            .unwrap();
    let meta: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart.join("Chart.yaml")).unwrap())
            .unwrap();
    let image = values.pointer(values_key).unwrap();
    format!(
        "{}:{}",
        image["repository"].as_str().unwrap(),
        meta["appVersion"].as_str().unwrap()
    )
}

/// An image unpacked: its reference (from the archive's index), its config and its root
/// filesystem with every layer applied.
struct Unpacked {
    reference: String,
    config: Value,
    rootfs: PathBuf,
    dir: PathBuf,
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs").join(digest.replacen(':', "/", 1))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn unpack(archive: &Path) -> Unpacked {
    let dir = std::env::temp_dir().join(format!("apiw-image-{}", apiworkload_e2e::unique_suffix()));
    let layout = dir.join("layout");
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&layout).unwrap();
    std::fs::create_dir_all(&rootfs).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&layout));
    let index = read_json(&layout.join("index.json"));
    let entry = &index["manifests"][0];
    let reference = entry["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let manifest = read_json(&blob(&layout, entry["digest"].as_str().unwrap()));
    let config = read_json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    for layer in manifest["layers"].as_array().unwrap() {
        let media = layer["mediaType"].as_str().unwrap();
        let mut tar = Command::new("tar");
        if media.ends_with("gzip") {
            tar.arg("-z");
        }
        run(tar
            .arg("-xf")
            .arg(blob(&layout, layer["digest"].as_str().unwrap()))
            .arg("-C")
            .arg(&rootfs));
    }
    Unpacked {
        reference,
        config,
        rootfs,
        dir,
    }
}

/// Runs `argv` inside the image's root filesystem as `user` (`uid:gid`): only what the
/// image carries is there.
fn run_in(image: &Unpacked, user: &str, argv: &[&str]) -> String {
    let out = run(Command::new("chroot")
        .arg(format!("--userspec={user}"))
        .arg(&image.rootfs)
        .args(argv)
        .env_clear()
        .env("PATH", "/opt/venv/bin:/usr/bin:/bin:/usr/sbin:/sbin"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn operator_and_sidecar_images_are_the_charts_and_start_on_an_empty_root() {
    for (values_key, binary) in [
        ("/image", "apiworkload-operator"),
        ("/sidecar/image", "apiworkload-sidecar"),
    ] {
        let reference = chart_image(values_key);
        let archive = images()
            .get(&reference)
            .unwrap_or_else(|| panic!("no image {reference} among {:?}", images().keys()));
        let image = unpack(archive);
        assert_eq!(
            image.reference, reference,
            "the name containerd imports it as"
        );
        let config = &image.config["config"];
        assert_eq!(config["User"], "65532:65532", "{binary}: non-root");
        assert_eq!(config["Entrypoint"][0], format!("/{binary}"));
        let files: Vec<_> = std::fs::read_dir(&image.rootfs)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            files,
            vec![binary.to_string()],
            "FROM scratch: the binary alone"
        );
        // Statically linked, or it could not start here: the image has no libc.
        let help = run_in(&image, "65532:65532", &[&format!("/{binary}"), "--help"]);
        assert!(help.contains("Usage:"), "{binary} --help: {help}");
    }
}

#[test]
fn pause_image_runs_as_the_sandbox() {
    let (reference, archive) = images()
        .iter()
        .find(|(r, _)| r.contains("/pause:"))
        .expect("a pause image");
    let image = unpack(archive);
    assert_eq!(&image.reference, reference);
    assert_eq!(image.config["config"]["User"], "65535:65535");
    let entrypoint = image.config["config"]["Entrypoint"].clone();
    assert_eq!(
        entrypoint,
        serde_json::json!(["/busybox", "sleep", "infinity"])
    );
    run_in(&image, "65535:65535", &["/busybox", "sleep", "0"]);
}

#[test]
fn test_app_image_carries_every_server_kind_and_the_app() {
    let (reference, archive) = images()
        .iter()
        .find(|(r, _)| r.contains("/testapp:"))
        .expect("a test app image");
    let image = unpack(archive);
    assert_eq!(&image.reference, reference);
    let config = &image.config["config"];
    assert_eq!(
        config["User"], "10001:10001",
        "the app UID the operator renders"
    );
    assert_eq!(config["WorkingDir"], "/app");
    // Every server the operator can render a command for, by the command it runs.
    for server in ["gunicorn", "uvicorn", "granian", "hypercorn"] {
        let help = run_in(&image, "10001:10001", &[server, "--help"]);
        assert!(
            help.to_lowercase().contains("usage"),
            "{server} --help: {help}"
        );
    }
    let imported = run_in(
        &image,
        "10001:10001",
        &[
            "python",
            "-c",
            "import sys; sys.path.insert(0, '/app'); import app, uvicorn_worker; print(type(app.api).__name__, type(app.app).__name__)",
        ],
    );
    // The FastAPI app, served behind its in-flight counter (tests/apps/app.py).
    assert_eq!(imported.trim(), "FastAPI InFlight");
}
