//! Build steps for CDRS plugins written in C (or any language with a plain
//! Wasm compiler), done with library crates so that nobody has to install the
//! `wit-bindgen` and `wasm-tools` CLIs (15–25 min each to compile):
//!
//! * [`c_bindings`]: what `wit-bindgen c WIT --world W` emits (`W.h`, `W.c`,
//!   `W_component_type.o`), from `wit-bindgen-c`;
//! * [`componentize`]: what `wasm-tools component new` does, from
//!   `wit-component`'s `ComponentEncoder`.
//!
//! The crate versions are pinned to the ones the Rust SDK (wit-bindgen 0.61.1)
//! already brings in.

use std::path::{Path, PathBuf};

use wit_bindgen_core::Files;
use wit_parser::Resolve;

/// Name under which a WASI preview-1 adapter is linked (the import module a
/// clang/wasi-libc build uses). Zig builds without WASI calls need none.
pub const WASI_PREVIEW1: &str = "wasi_snapshot_preview1";

/// What can go wrong in a build step. Each message is complete (it includes
/// the underlying error's chain), so print it with `{}`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("wit directory `{}` does not exist or is not a directory", .0.display())]
    NoWitDir(PathBuf),
    #[error("cannot parse the wit package in `{}`: {cause:#}", .path.display())]
    ParseWit { path: PathBuf, cause: anyhow::Error },
    #[error("no world `{world}` in the wit package in `{}`: {cause}", .path.display())]
    NoWorld {
        world: String,
        path: PathBuf,
        cause: anyhow::Error,
    },
    #[error("cannot generate c bindings for world `{world}`: {cause:#}")]
    Bindgen { world: String, cause: anyhow::Error },
    #[error("not a core wasm module with a component-type section: {0:#}")]
    Module(anyhow::Error),
    #[error("invalid adapter `{name}`: {cause:#}")]
    Adapter { name: String, cause: anyhow::Error },
    #[error("cannot encode the component: {0:#}")]
    Encode(anyhow::Error),
    #[error("not a wasm component: {0:#}")]
    Decode(anyhow::Error),
}

/// The files wit-bindgen's C generator emits for `world` of the WIT package
/// in `wit_dir` (a directory of `.wit` files, with an optional `deps/`):
/// `(file name, contents)`, e.g. `("router.h", ..)`, `("router.c", ..)`,
/// `("router_component_type.o", ..)`. Default options, as the CLI's.
pub fn c_bindings(wit_dir: &Path, world: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
    if !wit_dir.is_dir() {
        return Err(Error::NoWitDir(wit_dir.to_path_buf()));
    }
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_dir(wit_dir).map_err(|cause| Error::ParseWit {
        path: wit_dir.to_path_buf(),
        cause,
    })?;
    let world_id = resolve
        .select_world(&[pkg], Some(world))
        .map_err(|cause| Error::NoWorld {
            world: world.to_string(),
            path: wit_dir.to_path_buf(),
            cause,
        })?;
    let mut files = Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world_id, &mut files)
        .map_err(|cause| Error::Bindgen {
            world: world.to_string(),
            cause,
        })?;
    Ok(files
        .iter()
        .map(|(name, bytes)| (name.to_string(), bytes.to_vec()))
        .collect())
}

/// A component from `core_module`, a core Wasm module that carries the
/// `component-type` custom section (as linked from wit-bindgen's
/// `*_component_type.o`). `adapter`: the bytes of a WASI preview-1 adapter to
/// link as `wasi_snapshot_preview1`, for modules that import it (clang +
/// wasi-libc builds); `None` for modules without WASI imports (Zig builds).
/// The result is validated.
pub fn componentize(core_module: &[u8], adapter: Option<&[u8]>) -> Result<Vec<u8>, Error> {
    let mut enc = wit_component::ComponentEncoder::default();
    enc.module(core_module).map_err(Error::Module)?;
    enc.validate(true);
    if let Some(bytes) = adapter {
        enc.adapter(WASI_PREVIEW1, bytes)
            .map_err(|cause| Error::Adapter {
                name: WASI_PREVIEW1.to_string(),
                cause,
            })?;
    }
    enc.encode().map_err(Error::Encode)
}

/// The imports and exports of a component, as WIT names (e.g.
/// `cdrs:plugin/host@1.0.0`, `route`), sorted: a quick check that a build
/// imports nothing but the host interface (no WASI).
pub fn component_interface(component: &[u8]) -> Result<ComponentInterface, Error> {
    // Core modules have version 1, layer 0; components layer 1.
    if component.len() >= 8 && component[..4] == *b"\0asm" && component[6..8] == [0, 0] {
        return Err(Error::Decode(anyhow::anyhow!(
            "this is a core module: componentize it first"
        )));
    }
    let decoded = wit_component::decode(component).map_err(Error::Decode)?;
    let wit_component::DecodedWasm::Component(resolve, world) = decoded else {
        return Err(Error::Decode(anyhow::anyhow!(
            "this is a wit package, not a component"
        )));
    };
    let w = &resolve.worlds[world];
    let names = |items: &mut dyn Iterator<Item = &wit_parser::WorldKey>| {
        let mut v: Vec<String> = items.map(|k| resolve.name_world_key(k)).collect();
        v.sort();
        v
    };
    Ok(ComponentInterface {
        imports: names(&mut w.imports.keys()),
        exports: names(&mut w.exports.keys()),
    })
}

/// See [`component_interface`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInterface {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wit_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit")
    }

    #[test]
    fn c_bindings_emit_header_source_and_object_for_both_worlds() {
        for world in ["router", "filter"] {
            let files = c_bindings(&wit_dir(), world).unwrap();
            let mut names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
            names.sort();
            let want = [
                format!("{world}.c"),
                format!("{world}.h"),
                format!("{world}_component_type.o"),
            ];
            assert_eq!(names, want.iter().map(String::as_str).collect::<Vec<_>>());
            let h = &files.iter().find(|(n, _)| n.ends_with(".h")).unwrap().1;
            let h = String::from_utf8_lossy(h);
            assert!(h.contains(&format!("exports_{world}_init")), "{world}");
        }
    }

    #[test]
    fn c_bindings_errors_name_the_problem() {
        let e = c_bindings(Path::new("/nonexistent/wit"), "router").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/wit"), "{e}");
        let e = c_bindings(&wit_dir(), "nope").unwrap_err();
        assert!(e.to_string().contains("`nope`"), "{e}");
    }

    #[test]
    fn inspect_refuses_core_modules_and_garbage() {
        let core = b"\0asm\x01\0\0\0";
        let e = component_interface(core).unwrap_err();
        assert!(e.to_string().contains("core module"), "{e}");
        assert!(component_interface(b"nope").is_err());
    }

    #[test]
    fn componentize_rejects_non_wasm() {
        let e = componentize(b"not wasm", None).unwrap_err();
        assert!(e.to_string().starts_with("not a core wasm module"), "{e}");
    }
}
