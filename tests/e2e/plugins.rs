//! Plugin loading errors: clear messages naming the plugin and the file.

use cdrs::config::{PluginConfig, PluginRuntimeConfig};
use cdrs::metrics::Metrics;
use cdrs::plugin::filter::FilterPlugin;
use cdrs::plugin::router::RouterPlugin;
use cdrs::plugin::{PluginError, Runtime};
use cdrs_e2e::{plugin_dir, root};
use std::path::PathBuf;
use std::sync::Arc;

fn plugin(name: &str, path: PathBuf, config: &str) -> PluginConfig {
    PluginConfig {
        name: name.into(),
        path,
        config: toml::from_str(config).unwrap(),
    }
}

fn load_filter(p: &PluginConfig) -> Result<FilterPlugin, PluginError> {
    let rt = Runtime::new(&PluginRuntimeConfig::default()).unwrap();
    FilterPlugin::load(&rt, p, Arc::new(Metrics::new()))
}

#[test]
fn missing_file_non_wasm_and_wrong_world_are_named() {
    let e = load_filter(&plugin("f", root().join("nope.wasm"), ""))
        .err()
        .unwrap();
    assert!(matches!(e, PluginError::Read { .. }), "{e}");
    assert!(e.to_string().contains("nope.wasm"), "{e}");

    let not_wasm = root().join("tests/fixtures/config/not-wasm.txt");
    let e = load_filter(&plugin("f", not_wasm, "")).err().unwrap();
    assert!(e.to_string().contains("not a WebAssembly file"), "{e}");

    let e = load_filter(&plugin("f", plugin_dir().join("p2c_router.wasm"), ""))
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            PluginError::Link {
                world: "filter",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("does not fit the cdrs:plugin@0.1.0 filter world"),
        "{e}"
    );
}

#[test]
fn init_errors_reject_the_plugin_with_the_guest_message() {
    let bad = plugin(
        "f",
        plugin_dir().join("field_filter.wasm"),
        "rules = [{ action = \"drop\", equals = 1 }]",
    );
    let e = load_filter(&bad).err().unwrap();
    assert!(matches!(e, PluginError::Init { .. }), "{e}");
    assert!(e.to_string().contains("rules[0]"), "{e}");

    let rt = Runtime::new(&PluginRuntimeConfig::default()).unwrap();
    let bad = plugin("r", plugin_dir().join("p2c_router.wasm"), "stiky = true");
    let e = RouterPlugin::load(&rt, &bad, Arc::new(Metrics::new()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("stiky"), "{e}");
}
