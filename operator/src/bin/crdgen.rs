//! Writes the ApiWorkload CRD generated from the Rust types to `crds/` and to the Helm
//! chart's `crds/` (and prints it with `--stdout`). A unit test fails when either
//! committed copy drifts from the types.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let yaml = apiworkload_operator::api::rules::crd_yaml();
    if std::env::args().any(|a| a == "--stdout") {
        print!("{yaml}");
        return Ok(());
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["crds", "charts/apiworkload-operator/crds"] {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("apiworkloads.apiworkload.io.yaml");
        std::fs::write(&path, &yaml)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
