//! `cdrs plugin new`: a buildable plugin project per guest language.
//!
//! Each project is small on purpose: one source file with a working policy
//! (routers: least in-flight per capacity among healthy targets; filters:
//! drop records without a key), fixtures to run it on with
//! `cdrs plugin test`, and a README with the commands that matter (build,
//! check, test, deploy). The language guides in `sdk/<lang>/README.md` say
//! the rest.
//!
//! A project stands on its own: the SDK it builds with (the WIT contract,
//! the language's helpers and build script; for C also the component
//! tools' sources) is copied into its `sdk/` folder from this binary, so
//! it builds anywhere, with no path back to a CDRS source tree. The build
//! scripts keep their toolchains per user under `~/.cache/cdrs`.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// Where a new project's SDK comes from.
#[derive(Debug, Clone)]
pub enum Sdk {
    /// A copy in the project's `sdk/` folder, written from this binary.
    Vendored,
    /// An existing CDRS `sdk/` folder (e.g. of a checkout), referred to by
    /// its absolute path.
    At(PathBuf),
}

/// Creates the project folder `dir` for `lang` (`rust`, `python`, `js`, `c`)
/// and `world` (`router`, `filter`) with the SDK of `sdk`; returns the
/// files written (the vendored SDK's under `dir/sdk/` included).
///
/// Errors: an unknown language or world, `dir` already exists, an
/// [`Sdk::At`] folder that is not a CDRS SDK folder, or a write fails.
pub fn create(lang: &str, world: &str, dir: &Path, sdk: &Sdk) -> anyhow::Result<Vec<PathBuf>> {
    if !matches!(world, "router" | "filter") {
        bail!("unknown world {world:?}; use router or filter");
    }
    if dir.exists() {
        bail!("\"{}\" already exists; pick a new folder", dir.display());
    }
    let sdk_s = match sdk {
        Sdk::Vendored => "sdk".to_string(),
        Sdk::At(path) => path
            .canonicalize()
            .ok()
            .filter(|p| p.join("wit/plugin.wit").is_file())
            .with_context(|| {
                format!(
                    "\"{}\" is not a CDRS sdk folder (no wit/plugin.wit); leave out --sdk to copy the SDK into the project",
                    path.display()
                )
            })?
            .display()
            .to_string(),
    };
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .with_context(|| {
            format!(
                "the folder name of \"{}\" must be letters, digits, '-' or '_' (it names the plugin)",
                dir.display()
            )
        })?;
    let files = template(lang, world)?;
    let mut out: Vec<(String, String)> = files
        .iter()
        .chain(common(world).iter())
        .map(|(rel, text)| {
            let text = text
                .replace("{{name}}", name)
                .replace("{{name_snake}}", &name.replace('-', "_"))
                .replace("{{world}}", world)
                .replace("{{lang}}", lang)
                .replace("{{guide}}", &format!("{sdk_s}/{}", guide(lang)))
                .replace("{{sdk}}", &sdk_s);
            (rel.to_string(), text)
        })
        .collect();
    if matches!(sdk, Sdk::Vendored) {
        out.extend(vendored_sdk(lang));
    }
    let mut written = Vec::new();
    for (rel, text) in out {
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("failed to create \"{}\"", parent.display()))?;
        }
        std::fs::write(&path, text)
            .with_context(|| format!("failed to write \"{}\"", path.display()))?;
        if rel.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("failed to make \"{}\" executable", path.display()))?;
        }
        written.push(path);
    }
    Ok(written)
}

/// The SDK files a `lang` project gets under `sdk/`, as in the CDRS tree.
/// Cargo manifests lose their `*.workspace = true` keys (the project is
/// its own workspace) and come with the CDRS tree's `Cargo.lock`, so a
/// build resolves the same crate versions the SDK was tested with.
fn vendored_sdk(lang: &str) -> Vec<(String, String)> {
    macro_rules! sdk_file {
        ($rel:literal) => {
            (
                concat!("sdk/", $rel),
                include_str!(concat!("../../../sdk/", $rel)),
            )
        };
    }
    const LOCK: &str = include_str!("../../../Cargo.lock");
    let mut files: Vec<(&str, &str)> = vec![
        sdk_file!("README.md"),
        sdk_file!("wit/plugin.wit"),
        sdk_file!("example-policy.md"),
    ];
    match lang {
        "rust" => files.extend([
            sdk_file!("rust/Cargo.toml"),
            sdk_file!("rust/README.md"),
            sdk_file!("rust/src/lib.rs"),
            sdk_file!("rust/src/json.rs"),
            sdk_file!("rust/src/layout.rs"),
            ("Cargo.lock", LOCK),
        ]),
        "python" => files.extend([
            sdk_file!("python/README.md"),
            sdk_file!("python/build.sh"),
            sdk_file!("python/cdrs_plugin.py"),
        ]),
        "js" => files.extend([
            sdk_file!("js/README.md"),
            sdk_file!("js/build.sh"),
            sdk_file!("js/cdrs-plugin.js"),
            sdk_file!("js/package.json"),
            sdk_file!("js/package-lock.json"),
        ]),
        _ => files.extend([
            sdk_file!("c/README.md"),
            sdk_file!("c/build.sh"),
            sdk_file!("c/cdrs_plugin.h"),
            sdk_file!("tools/Cargo.toml"),
            sdk_file!("tools/src/lib.rs"),
            sdk_file!("tools/src/main.rs"),
            ("sdk/tools/Cargo.lock", LOCK),
        ]),
    }
    files
        .into_iter()
        .map(|(rel, text)| {
            let text = if rel.ends_with("Cargo.toml") {
                standalone_manifest(text, rel == "sdk/tools/Cargo.toml")
            } else {
                text.to_string()
            };
            (rel.to_string(), text)
        })
        .collect()
}

/// `text` (a member manifest of the CDRS workspace) with the workspace's
/// values in place of `*.workspace = true`; `own_workspace` adds an empty
/// `[workspace]` so the crate builds on its own.
fn standalone_manifest(text: &str, own_workspace: bool) -> String {
    let mut out: String = text
        .lines()
        .map(|line| match line.trim() {
            "edition.workspace = true" => "edition = \"2021\"".to_string(),
            "version.workspace = true" => format!("version = \"{}\"", env!("CARGO_PKG_VERSION")),
            "license.workspace = true" => "license = \"Apache-2.0\"".to_string(),
            "anyhow.workspace = true" => "anyhow = \"1\"".to_string(),
            "thiserror.workspace = true" => "thiserror = \"2\"".to_string(),
            _ => line.to_string(),
        })
        .map(|l| l + "\n")
        .collect();
    if own_workspace {
        out.push_str("\n# Its own workspace: built alone, with its own Cargo.lock.\n[workspace]\n");
    }
    out
}

type Files = Vec<(&'static str, &'static str)>;

fn template(lang: &str, world: &str) -> anyhow::Result<Files> {
    Ok(match (lang, world) {
        ("rust", w) => vec![
            ("Cargo.toml", RUST_CARGO),
            (
                "src/lib.rs",
                if w == "router" {
                    RUST_ROUTER
                } else {
                    RUST_FILTER
                },
            ),
            ("build.sh", RUST_BUILD),
            (".cargo/config.toml", RUST_CARGO_CONFIG),
        ],
        ("python", w) => vec![
            (
                "app.py",
                if w == "router" {
                    PYTHON_ROUTER
                } else {
                    PYTHON_FILTER
                },
            ),
            ("build.sh", SDK_BUILD),
        ],
        ("js", w) => vec![
            (
                "plugin.js",
                if w == "router" { JS_ROUTER } else { JS_FILTER },
            ),
            ("build.sh", SDK_BUILD),
        ],
        ("c", w) => vec![
            ("plugin.c", if w == "router" { C_ROUTER } else { C_FILTER }),
            ("build.sh", SDK_BUILD),
        ],
        (other, _) => bail!("unknown language {other:?}; use rust, python, js or c"),
    })
}

/// Fixtures and README, the same for every language.
fn common(world: &str) -> Files {
    let readme = if world == "router" {
        README_ROUTER
    } else {
        README_FILTER
    };
    let mut files = vec![
        ("fixtures/records.jsonl", FIXTURE_RECORDS),
        ("README.md", readme),
    ];
    if world == "router" {
        files.push(("fixtures/targets.json", FIXTURE_TARGETS));
    }
    files
}

/// The language guide in the SDK folder.
fn guide(lang: &str) -> &'static str {
    match lang {
        "python" => "python/README.md",
        "js" => "js/README.md",
        "c" => "c/README.md",
        _ => "rust/README.md",
    }
}

const README_ROUTER: &str = r#"# {{name}}: a CDRS router plugin

    ./build.sh                                   # -> {{name_snake}}.wasm
    cdrs plugin check {{name_snake}}.wasm        # world, contract version, imports
    cdrs plugin test {{name_snake}}.wasm --records fixtures/records.jsonl --targets fixtures/targets.json

`cdrs plugin test` prints one decision per record. Save a run you have checked
by eye as `fixtures/expect.jsonl` and add `--expect fixtures/expect.jsonl`:
from then on it prints a diff and exits 1 when a change alters a decision.

Deploy to every CDRS of a fleet (through its control topic; each one
compiles it off the hot path, calls `init`, and swaps it in between
batches; `cdrs plugin status` shows who runs what):

    cdrs plugin deploy --config cdrs.toml ROUTER_NAME {{name_snake}}.wasm --label v1

or, for one process, point `[router] path` in its config at the .wasm file.
The guide for this language: `{{guide}}`; the contract and the host's rules:
`{{sdk}}/README.md`.
"#;

const README_FILTER: &str = r#"# {{name}}: a CDRS filter plugin

    ./build.sh                                   # -> {{name_snake}}.wasm
    cdrs plugin check {{name_snake}}.wasm        # world, contract version, imports
    cdrs plugin test {{name_snake}}.wasm --records fixtures/records.jsonl

`cdrs plugin test` prints one verdict per record. Save a run you have checked
by eye as `fixtures/expect.jsonl` and add `--expect fixtures/expect.jsonl`:
from then on it prints a diff and exits 1 when a change alters a verdict.

Deploy: add a `[[filters]]` entry named FILTER_NAME to the CDRS config
(its `path` is the version a process starts with), then replace it on
every CDRS of the fleet through the control topic (each one compiles it
off the hot path, calls `init`, and swaps it in between batches):

    cdrs plugin deploy --config cdrs.toml FILTER_NAME {{name_snake}}.wasm --label v1

The guide for this language: `{{guide}}`; the contract and the host's rules:
`{{sdk}}/README.md`.
"#;

const FIXTURE_RECORDS: &str = r#"{"key": "client-1", "value": "{\"type\":\"trade\",\"qty\":5}"}
{"key": "client-2", "value": "{\"type\":\"trade\",\"qty\":7}", "headers": [["x-source", "live"]]}
{"value": "{\"type\":\"heartbeat\"}"}
{"key": "client-1", "value": "{\"type\":\"quote\"}"}
"#;

const FIXTURE_TARGETS: &str = r#"[
  {"id": "blotter-1", "capacity": 100, "inflight": 0},
  {"id": "blotter-2", "capacity": 200, "inflight": 1},
  {"id": "blotter-3", "capacity": 400, "inflight": 0, "health": "down"}
]
"#;

const RUST_CARGO: &str = r#"[package]
name = "{{name}}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
cdrs-plugin-sdk = { path = "{{sdk}}/rust", features = ["{{world}}"] }

# Small, no unwinding: a panic is a trap the host handles.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true

# Its own workspace, even when created inside another one.
[workspace]
"#;

/// Same inlining and SIMD as the repository's own plugins (see `.cargo/config.toml`
/// at the root of the CDRS tree for the measurement).
const RUST_CARGO_CONFIG: &str = r#"# More inlining than LLVM's default (225): under wasmtime every call costs an
# epoch check (the call deadline) and a stack-limit check on entry. In
# `cdrs bench` this made a JSON filter ~20% faster, for ~20% more bytes.
# Wasm SIMD (on in wasmtime by default) lets `memchr`, which serde_json
# uses for strings, scan 16 bytes at a time: ~4% more on that filter.
[target.wasm32-wasip2]
rustflags = ["-C", "llvm-args=-inline-threshold=1000", "-C", "target-feature=+simd128"]
"#;

const RUST_BUILD: &str = r#"#!/usr/bin/env bash
# Builds {{name_snake}}.wasm (a wasm32-wasip2 component).
set -euo pipefail
cd "$(dirname "$0")"
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --release --target wasm32-wasip2
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{name_snake}}.wasm" .
echo "built {{name_snake}}.wasm"
"#;

const RUST_ROUTER: &str = r#"//! {{name}}: sends each record to the healthy target with the fewest
//! records in flight per unit of capacity.

use cdrs_plugin_sdk::router::{Batch, Decision, Health, Router, RouterOptions, Target};

pub struct Plugin {
    targets: Vec<Target>,
    /// Records routed to each target since the last update-targets.
    assigned: Vec<u64>,
}

impl Router for Plugin {
    fn init(_config: &str) -> Result<(Self, RouterOptions), String> {
        let plugin = Plugin { targets: Vec::new(), assigned: Vec::new() };
        Ok((plugin, RouterOptions::default()))
    }

    fn update_targets(&mut self, _version: u64, targets: Vec<Target>) {
        self.assigned = vec![0; targets.len()];
        self.targets = targets;
    }

    fn route(&mut self, batch: Batch) -> Vec<Decision> {
        batch
            .records()
            .map(|_record| {
                let load = |i: usize| {
                    let t = &self.targets[i];
                    (u64::from(t.inflight) + self.assigned[i]) as f64 / f64::from(t.capacity.max(1))
                };
                let best = (0..self.targets.len())
                    .filter(|&i| self.targets[i].health == Health::Healthy)
                    .min_by(|&a, &b| load(a).total_cmp(&load(b)));
                match best {
                    Some(i) => {
                        self.assigned[i] += 1;
                        Decision::Route(i as u32)
                    }
                    // No healthy target: let the host's fallback decide.
                    None => Decision::Default,
                }
            })
            .collect()
    }
}

cdrs_plugin_sdk::export_router!(Plugin);
"#;

const RUST_FILTER: &str = r#"//! {{name}}: drops records without a key, keeps the rest.

use cdrs_plugin_sdk::filter::{Batch, Filter, Verdict};

pub struct Plugin;

impl Filter for Plugin {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(Plugin)
    }

    fn filter(&mut self, batch: Batch) -> Vec<Verdict> {
        batch
            .records()
            .map(|r| if r.key().is_some() { Verdict::Keep } else { Verdict::Drop })
            .collect()
    }
}

cdrs_plugin_sdk::export_filter!(Plugin);
"#;

/// Python, JS and C projects build with their SDK's one-command build
/// (which installs its toolchain on first use: componentize-py, or
/// componentize-js, or Zig and the CDRS component tools).
const SDK_BUILD: &str = r#"#!/usr/bin/env bash
# Builds {{name_snake}}.wasm with the CDRS {{lang}} SDK's build.
set -euo pipefail
cd "$(dirname "$0")"
"{{sdk}}/{{lang}}/build.sh" . {{world}} {{name_snake}}.wasm
"#;

const PYTHON_ROUTER: &str = include_str!("scaffold/router.py");
const PYTHON_FILTER: &str = include_str!("scaffold/filter.py");

const JS_ROUTER: &str = include_str!("scaffold/router.js");
const JS_FILTER: &str = include_str!("scaffold/filter.js");

const C_ROUTER: &str = include_str!("scaffold/router.c");
const C_FILTER: &str = include_str!("scaffold/filter.c");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_and_world_scaffolds_and_bad_names_are_refused() {
        let base = std::env::temp_dir().join(format!("cdrs-scaffold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        for lang in ["rust", "python", "js", "c"] {
            for world in ["router", "filter"] {
                let dir = base.join(format!("{lang}-{world}"));
                let files = create(lang, world, &dir, &Sdk::Vendored).unwrap();
                assert!(files.iter().any(|f| f.ends_with("README.md")));
                assert!(dir.join("sdk/wit/plugin.wit").is_file());
                for f in files.iter().filter(|f| f.ends_with("Cargo.toml")) {
                    let t = std::fs::read_to_string(f).unwrap();
                    assert!(!t.contains(".workspace = true"), "{}: {t}", f.display());
                }
                if lang == "rust" {
                    let cfg = dir.join(".cargo/config.toml");
                    assert!(files.contains(&cfg), "{files:?}");
                    let cfg = std::fs::read_to_string(cfg).unwrap();
                    assert!(cfg.contains("inline-threshold=1000"), "{cfg}");
                    assert!(cfg.contains("+simd128"), "{cfg}");
                }
                let text: String = files
                    .iter()
                    .filter(|f| !f.starts_with(dir.join("sdk")))
                    .map(|f| std::fs::read_to_string(f).unwrap())
                    .collect();
                assert!(
                    !text.contains("{{"),
                    "unfilled placeholder in {lang} {world}"
                );
            }
        }
        let again = create("rust", "router", &base.join("rust-router"), &Sdk::Vendored);
        assert!(again.unwrap_err().to_string().contains("already exists"));
        let e = create("cobol", "router", &base.join("x"), &Sdk::Vendored).unwrap_err();
        assert!(e.to_string().contains("unknown language \"cobol\""), "{e}");
        let e = create("rust", "router", &base.join("a b"), &Sdk::Vendored).unwrap_err();
        assert!(e.to_string().contains("must be letters"), "{e}");
        let at = Sdk::At(PathBuf::from("/nonexistent"));
        let e = create("rust", "router", &base.join("y"), &at).unwrap_err();
        assert!(e.to_string().contains("--sdk"), "{e}");
        let _ = std::fs::remove_dir_all(&base);
    }
}
