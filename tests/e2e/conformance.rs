//! The SDK conformance suite: every language's example router and filter
//! (`plugins/example-{router,filter}[-python|-js|-c]`, the portable policy of
//! `sdk/example-policy.md`) runs on the fixtures in `tests/conformance/` and
//! must give exactly the expected decisions, so all languages agree with each
//! other. The decisions also pass checks that do not depend on the expected
//! files: nothing goes to a down, zero-capacity or zero-weight target, a
//! draining one only when no healthy one is left, and a sticky key keeps its
//! target.

use cdrs::capacity::{Health, TargetView};
use cdrs::config::PluginRuntimeConfig;
use cdrs::plugin::scaffold::Sdk;
use cdrs::plugin::testbed::{self, TestRun};
use cdrs::plugin::Runtime;
use cdrs_e2e::{plugin_dir, root};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// (language, file-name suffix of its example plugins).
const LANGUAGES: [(&str, &str); 4] = [
    ("rust", ""),
    ("python", "_python"),
    ("js", "_js"),
    ("c", "_c"),
];

fn cases(world: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("tests/conformance").join(world))
        .expect("tests/conformance exists")
        .map(|e| e.expect("readable dir").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 8, "too few {world} cases: {dirs:?}");
    dirs
}

fn example(world: &str, suffix: &str) -> PathBuf {
    let wasm = plugin_dir().join(format!("example_{world}{suffix}.wasm"));
    assert!(
        wasm.is_file(),
        "{} missing: build the examples with `scripts/dev.sh plugins` (it installs each \
         language's toolchain)",
        wasm.display()
    );
    wasm
}

fn run_case(runtime: &std::sync::Arc<Runtime>, wasm: &Path, case: &Path) -> TestRun {
    let records = testbed::read_records(&case.join("records.jsonl")).expect("records");
    let targets = match case.join("targets.json") {
        t if t.is_file() => testbed::read_targets(&t).expect("targets"),
        _ => Vec::new(),
    };
    let config = std::fs::read_to_string(case.join("config.json")).expect("config");
    testbed::run(runtime, wasm, &records, &targets, &config, 256)
        .unwrap_or_else(|e| panic!("{} on {}: {e}", wasm.display(), case.display()))
}

/// Checks router decisions against the policy's invariants.
fn check_router_invariants(
    case: &Path,
    targets: &[TargetView],
    lines: &[Value],
    problems: &mut Vec<String>,
) {
    let records = testbed::read_records(&case.join("records.jsonl")).expect("records");
    let usable = |t: &TargetView| t.capacity > 0 && t.weight > 0;
    let any_healthy = targets
        .iter()
        .any(|t| t.health == Health::Healthy && usable(t));
    let any_usable = targets
        .iter()
        .any(|t| t.health != Health::Down && usable(t));
    let config = std::fs::read_to_string(case.join("config.json")).unwrap_or_default();
    let sticky_on_key = config.contains("\"sticky\": true") && !config.contains("sticky_header");
    let mut sticky: HashMap<Vec<u8>, String> = HashMap::new();
    for (line, record) in lines.iter().zip(&records) {
        if line.get("init").is_some() {
            return;
        }
        let decision = line["decision"].as_str().unwrap_or("");
        if !any_usable {
            if decision != "default" {
                problems.push(format!(
                    "{}: no eligible target, yet {line}",
                    case.display()
                ));
            }
            continue;
        }
        for id in line["targets"].as_array().into_iter().flatten() {
            let t = targets
                .iter()
                .find(|t| *t.id == *id.as_str().unwrap_or(""))
                .expect("known id");
            let bad = t.health == Health::Down
                || !usable(t)
                || (t.health == Health::Degraded && any_healthy);
            if bad {
                problems.push(format!(
                    "{}: routed to ineligible {:?}: {line}",
                    case.display(),
                    t.id
                ));
            }
            if let (true, Some(key)) = (sticky_on_key, &record.key) {
                let first = sticky
                    .entry(key.clone())
                    .or_insert_with(|| t.id.to_string());
                if *first != *t.id {
                    problems.push(format!(
                        "{}: key {key:?} moved from {first} to {}",
                        case.display(),
                        t.id
                    ));
                }
            }
        }
    }
}

#[test]
fn every_language_gives_the_expected_decisions() {
    let runtime = Runtime::new(&PluginRuntimeConfig {
        instances: 1,
        ..Default::default()
    })
    .expect("runtime");
    let mut problems = Vec::new();
    let mut table = Vec::new();
    for world in ["router", "filter"] {
        let cases = cases(world);
        for (lang, suffix) in LANGUAGES {
            let wasm = example(world, suffix);
            let size = std::fs::metadata(&wasm).expect("wasm").len();
            let mut us = Vec::new();
            for case in &cases {
                let run = run_case(&runtime, &wasm, case);
                assert_eq!(run.world, world, "{} is not a {world}", wasm.display());
                if run.errors > 0 {
                    problems.push(format!(
                        "{lang} {world} {}: {} failed call(s)",
                        case.display(),
                        run.errors
                    ));
                }
                let expect =
                    testbed::read_expect(&case.join("expect.jsonl")).expect("expect.jsonl");
                for d in testbed::diff(&expect, &run.lines) {
                    problems.push(format!("{lang} {world} {}: {d}", case.display()));
                }
                if world == "router" {
                    let targets =
                        testbed::read_targets(&case.join("targets.json")).expect("targets");
                    check_router_invariants(case, &targets, &run.lines, &mut problems);
                }
                if !run.calls.is_empty() {
                    us.push(run.us_per_record());
                }
            }
            us.sort_by(f64::total_cmp);
            let median = us.get(us.len() / 2).copied().unwrap_or(0.0);
            table.push(format!(
                "{world:<7} {lang:<7} {:>9} bytes  {median:>8.2} µs/record (median of cases)",
                size
            ));
        }
    }
    eprintln!("conformance: {}", table.join("\n             "));
    assert!(
        problems.is_empty(),
        "{} difference(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn plugin_test_reports_a_changed_decision() {
    // The diff path end to end: one changed expected decision is reported.
    let case = root().join("tests/conformance/router/weighted");
    let runtime = Runtime::new(&PluginRuntimeConfig::default()).expect("runtime");
    let run = run_case(&runtime, &example("router", ""), &case);
    let mut expect = testbed::read_expect(&case.join("expect.jsonl")).expect("expect");
    expect[3]["targets"] = serde_json::json!(["nobody"]);
    let diff = testbed::diff(&expect, &run.lines);
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert!(
        diff[0].starts_with("line 4:") && diff[0].contains("nobody"),
        "{diff:?}"
    );
}

#[test]
fn scaffolded_rust_projects_build_and_run() {
    scaffolded_projects_build_and_run("rust");
}

#[test]
fn scaffolded_python_projects_build_and_run() {
    scaffolded_projects_build_and_run("python");
}

#[test]
fn scaffolded_js_projects_build_and_run() {
    scaffolded_projects_build_and_run("js");
}

#[test]
fn scaffolded_c_projects_build_and_run() {
    scaffolded_projects_build_and_run("c");
}

/// `cdrs plugin new` for `lang` and each world gives a project, outside
/// the checkout, whose one build command makes a component that loads and
/// runs on its own fixtures.
/// One test per language, so the languages build side by side.
fn scaffolded_projects_build_and_run(lang: &str) {
    let base = std::env::temp_dir().join(format!("cdrs-new-{lang}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let runtime = Runtime::new(&PluginRuntimeConfig {
        instances: 1,
        ..Default::default()
    })
    .expect("runtime");
    for world in ["router", "filter"] {
        let name = format!("my-{lang}-{world}");
        let dir = base.join(&name);
        // Outside the checkout, with the SDK copied into the project.
        cdrs::plugin::scaffold::create(lang, world, &dir, &Sdk::Vendored).expect("scaffold");
        let out = std::process::Command::new("bash")
            .arg(dir.join("build.sh"))
            // Rust projects share one target folder so dependencies compile
            // once; C ones the component tools the checkout built (building
            // them from the project's copy gives the same binary).
            .env("CARGO_TARGET_DIR", root().join("target/scaffold"))
            .env(
                "CDRS_PLUGIN_TOOLS",
                root().join("target/release/cdrs-plugin-tools"),
            )
            .output()
            .expect("run build.sh");
        assert!(
            out.status.success(),
            "{lang} {world} build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let wasm = dir.join(format!("{}.wasm", name.replace('-', "_")));
        let records = testbed::read_records(&dir.join("fixtures/records.jsonl")).expect("records");
        let targets = match world {
            "router" => testbed::read_targets(&dir.join("fixtures/targets.json")).expect("targets"),
            _ => Vec::new(),
        };
        let run = testbed::run(&runtime, &wasm, &records, &targets, "{}", 256)
            .unwrap_or_else(|e| panic!("{lang} {world}: {e}"));
        assert_eq!(run.world, world);
        assert_eq!(run.errors, 0, "{lang} {world}: failed plugin calls");
        let got: Vec<String> = run.lines.iter().map(|l| l.to_string()).collect();
        // The templates' policies: routers pick the least loaded healthy
        // target by (in-flight + assigned) / capacity: blotter-1 0/100,
        // blotter-2 1/200, then they take turns (ties go to the first);
        // blotter-3 is down. Filters drop the one record without a key.
        let want: Vec<String> = if world == "router" {
            ["blotter-1", "blotter-2", "blotter-1", "blotter-2"]
                .iter()
                .enumerate()
                .map(|(i, t)| format!(r#"{{"decision":"route","offset":{i},"targets":["{t}"]}}"#))
                .collect()
        } else {
            ["keep", "keep", "drop", "keep"]
                .iter()
                .enumerate()
                .map(|(i, v)| format!(r#"{{"offset":{i},"verdict":"{v}"}}"#))
                .collect()
        };
        assert_eq!(got, want, "{lang} {world}");
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// Contract versioning on real components: the C example filter built
/// against the contract as released at 1.0.0 (kept in
/// `tests/conformance/contract-1.0.0/`), and against a copy of the current
/// one marked with the next minor, loads and gives the same verdicts
/// (semver: a 1.x only adds); built against the next major it is refused
/// with a message naming both versions.
#[test]
fn earlier_and_later_1x_plugins_load_and_another_major_is_refused() {
    let base = std::env::temp_dir().join(format!("cdrs-versions-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let wit = std::fs::read_to_string(root().join("sdk/wit/plugin.wit")).expect("wit");
    let host = cdrs::plugin::contract::host_version();
    let case = root().join("tests/conformance/filter/all-rules");
    let runtime = Runtime::new(&PluginRuntimeConfig {
        instances: 1,
        ..Default::default()
    })
    .expect("runtime");
    let marked = |version: &str| {
        let marked = wit.replace(
            &format!("package cdrs:plugin@{host};"),
            &format!("package cdrs:plugin@{version};"),
        );
        assert_ne!(marked, wit, "the WIT names its version");
        marked
    };
    let build = |version: &str, wit: String| -> PathBuf {
        let tag = version.replace('.', "-");
        let wit_dir = base.join(format!("wit-{tag}"));
        std::fs::create_dir_all(&wit_dir).unwrap();
        std::fs::write(wit_dir.join("plugin.wit"), wit).unwrap();
        // Its own folder name, so the C build's scratch folder is its own too.
        let src = base.join(format!("filter-{tag}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::copy(
            root().join("plugins/example-filter-c/filter.c"),
            src.join("filter.c"),
        )
        .unwrap();
        let wasm = base.join(format!("filter-{tag}.wasm"));
        let out = std::process::Command::new("bash")
            .arg(root().join("sdk/c/build.sh"))
            .args([src.as_os_str(), "filter".as_ref(), wasm.as_os_str()])
            .env("CDRS_WIT_DIR", &wit_dir)
            .output()
            .expect("sdk/c/build.sh");
        assert!(
            out.status.success(),
            "build against {version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wasm
    };
    let expect = testbed::read_expect(&case.join("expect.jsonl")).expect("expect");
    let released = std::fs::read_to_string(case.join("../../contract-1.0.0/plugin.wit"))
        .expect("contract 1.0.0");
    let later = format!("{}.{}.0", host.major, host.minor + 1);
    for (version, wit) in [
        ("1.0.0".to_string(), released),
        (later.clone(), marked(&later)),
    ] {
        let wasm = build(&version, wit);
        let inspection = cdrs::plugin::contract::Inspection::of(
            runtime.engine(),
            &runtime
                .compile("versioned", &wasm, None, None)
                .expect("compile")
                .component,
        );
        assert_eq!(
            inspection.version().map(|v| v.to_string()),
            Some(version.clone())
        );
        let run = run_case(&runtime, &wasm, &case);
        assert!(
            testbed::diff(&expect, &run.lines).is_empty(),
            "{version}: {:?}",
            run.lines
        );
    }

    let next_major = format!("{}.0.0", host.major + 1);
    let records = testbed::read_records(&case.join("records.jsonl")).expect("records");
    let err = testbed::run(
        &runtime,
        &build(&next_major, marked(&next_major)),
        &records,
        &[],
        "{}",
        256,
    )
    .expect_err("another major is refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("cdrs:plugin@{next_major}"))
            && msg.contains(&format!("cdrs:plugin@{host}")),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&base);
}
