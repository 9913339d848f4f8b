//! The container image (scripts/image): built here with no daemon from the test binary, its OCI layout
//! checked (digests, non-root user, the chart's default name and tag), its filesystem unpacked and the
//! binary run from it as the non-root user (`--version`, `crds`) with nothing but the image's files.

mod common;

use std::path::Path;
use std::process::Command;

fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let data = std::fs::read(path).unwrap();
    Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn blob(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

#[test]
fn the_image_builds_without_a_daemon_and_its_binary_runs_as_non_root() {
    let root = common::root();
    let out = tempfile::tempdir().unwrap();
    let built = Command::new(root.join("scripts/image/build.sh"))
        .arg(out.path())
        .env("QM_IMAGE_BINARY", env!("CARGO_BIN_EXE_quartermaster"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );

    // The layout: every blob is what its digest says; the config runs as non-root.
    let layout = out.path().join("layout");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = &index["manifests"][0];
    let manifest_path = blob(&layout, m["digest"].as_str().unwrap());
    assert_eq!(
        format!("sha256:{}", sha256_hex(&manifest_path)),
        m["digest"]
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    for d in std::iter::once(&manifest["config"]).chain(manifest["layers"].as_array().unwrap()) {
        let p = blob(&layout, d["digest"].as_str().unwrap());
        assert_eq!(format!("sha256:{}", sha256_hex(&p)), d["digest"]);
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            d["size"].as_u64().unwrap()
        );
    }
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(
            &layout,
            manifest["config"]["digest"].as_str().unwrap(),
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/quartermaster"])
    );

    // Its name and tag are the chart's defaults.
    let values = std::fs::read_to_string(root.join("charts/quartermaster/values.yaml")).unwrap();
    let chart = std::fs::read_to_string(root.join("charts/quartermaster/Chart.yaml")).unwrap();
    let repo = values
        .lines()
        .find_map(|l| l.trim().strip_prefix("repository: "))
        .unwrap();
    let app = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion: "))
        .unwrap()
        .trim_matches('"');
    assert_eq!(
        m["annotations"]["org.opencontainers.image.ref.name"],
        format!("{repo}:{app}")
    );
    assert!(out.path().join("image.oci.tar").exists());

    // The binary runs from the image's files alone, as the non-root user.
    let rootfs = out.path().join("rootfs");
    let run = |args: &[&str]| {
        let o = if unsafe_is_root() {
            let chroot = ["/usr/sbin/chroot", "/usr/bin/chroot", "/sbin/chroot"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .unwrap_or("chroot");
            Command::new(chroot)
                .arg("--userspec=65532:65532")
                .arg(&rootfs)
                .arg("/quartermaster")
                .args(args)
                .env_clear()
                .output()
                .unwrap()
        } else {
            // Without root: the image's own loader and libraries, nothing from the host's paths.
            let loader = std::fs::read_dir(rootfs.join("lib64"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.to_string_lossy().contains("ld-linux"))
                .unwrap();
            let libs = [
                "lib",
                "lib64",
                "usr/lib",
                "lib/x86_64-linux-gnu",
                "usr/lib/x86_64-linux-gnu",
            ]
            .iter()
            .map(|d| rootfs.join(d).display().to_string())
            .collect::<Vec<_>>()
            .join(":");
            Command::new(loader)
                .args(["--inhibit-cache", "--library-path", &libs])
                .arg(rootfs.join("quartermaster"))
                .args(args)
                .env_clear()
                .output()
                .unwrap()
        };
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    assert!(run(&["--version"]).contains(env!("CARGO_PKG_VERSION")));
    let crds = run(&["crds"]);
    assert!(
        crds.contains("kind: CustomResourceDefinition")
            && crds.contains("subscriptions.quartermaster.dev")
    );
}

/// Whether this process runs as root (`chroot` needs it).
fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
