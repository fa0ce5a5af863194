//! A look at a component's binary before it is compiled: its top-level
//! imports and exports, and what compiling it would cost.
//!
//! Compiling is the one step of loading a plugin whose cost the plugin's
//! author sets, and it is the costly one: a 16 KB component can take 5.8 s
//! of CPU to compile only to be refused at link time, and concurrent
//! uploads would compile it once each. Reading the
//! binary with wasmparser (the version wasmtime itself uses) takes
//! milliseconds, so [`Runtime::compile_bytes`] refuses a component over
//! [`MAX_DECLARED_LOCALS`], [`MAX_CODE_BYTES`] or [`MAX_FUNCTIONS`], or one
//! the host would refuse anyway (imports it does not grant, a contract
//! version it does not run, the wrong world), before a single function is
//! compiled.
//!
//! The budgets sit well above the largest real plugins (measured by the
//! test `real_plugins_fit_the_compile_budget` on the plugins
//! `scripts/dev.sh plugins` builds, 2026-12-03, wasmtime 48.0.8):
//!
//! | plugin | declared locals | code bytes | functions | compile |
//! |---|---|---|---|---|
//! | example (JS, componentize-js) | 51,899 | 9,231,126 | 12,709 | 28.6 s |
//! | example (Python, componentize-py 0.25.1) | 47,763 | 6,571,099 | 13,358 | 23.4 s |
//! | field_filter (Rust) | 1,600 | 233,461 | 382 | 0.3–0.7 s |
//!
//! (compile: `Component::new` in a debug build of cdrs with dependencies at
//! opt-level 2, on a busy 2-core machine.)
//!
//! Nothing here validates the component: wasmtime does that while
//! compiling. A binary wasmparser cannot read is refused as unreadable.
//!
//! [`Runtime::compile_bytes`]: super::Runtime::compile_bytes

use wasmparser::{ComponentTypeRef, Parser, Payload, TypeBounds};

/// Most locals all core functions of a component may declare together.
///
/// Guards compile time and the compiler's memory against functions that
/// declare the most locals wasmparser allows (50,000 each) many times over.
/// The largest real plugins declare about 52,000 in all (see the module
/// docs); 2,000,000 leaves a margin of 38x. On wasmtime 48 unused declared
/// locals turned out cheap (40 functions × 50,000 locals compiled in
/// 0.1–0.2 s), so this is a backstop; [`MAX_FUNCTIONS`] bounds the
/// costlier shape.
pub const MAX_DECLARED_LOCALS: u64 = 2_000_000;

/// Most bytes all code sections of a component may hold together.
///
/// Guards compile time and memory, both roughly linear in the code: the
/// largest real plugin holds 8.8 MiB (JS) and takes ~29 s to compile on
/// the machine of the module docs; 64 MiB leaves a margin of 7x.
pub const MAX_CODE_BYTES: u64 = 64 << 20;

/// Most core functions (code-section entries) a component may define.
///
/// Guards compile time where it grows fastest per input byte: each function
/// has a fixed cost in Cranelift and in the artifact's metadata, so 20,000
/// empty functions (120 KB) took 2.1 s to compile, ~6x the cost per byte of
/// real code. The largest real plugins define about 13,400 functions;
/// 200,000 leaves a margin of 15x and bounds such a component to about the
/// compile time of the JS example (~20 s).
pub const MAX_FUNCTIONS: u64 = 200_000;

/// What a component's binary says about it, read without compiling.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Names of its top-level imports (`cdrs:plugin/types@1.0.0`, …), but
    /// not type imports bounded by equality (types it defines itself).
    pub imports: Vec<String>,
    /// Names of its top-level exports (`init`, `filter`, …).
    pub exports: Vec<String>,
    /// Locals declared by the core functions of all its modules (not
    /// counting parameters).
    pub locals: u64,
    /// Bytes of the code sections of all its modules.
    pub code_bytes: u64,
    /// Core functions defined in all its modules.
    pub functions: u64,
}

/// Reads `bytes` (a component) once, top to bottom, nested modules and
/// components included.
///
/// Errors: wasmparser's message when the binary cannot be read.
pub fn scan(bytes: &[u8]) -> Result<Scan, String> {
    let mut out = Scan::default();
    // 1 while in the top-level component; nested modules and components
    // each open one more level (`Version`) and close it (`End`).
    let mut depth = 0usize;
    let read = |e: wasmparser::BinaryReaderError| e.to_string();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(read)? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(r) if depth == 1 => {
                for i in r {
                    let i = i.map_err(read)?;
                    // `(import "batch" (type (eq N)))` names a type the
                    // component defines itself (wit-component writes one
                    // per type of its world): nothing the host provides.
                    if let ComponentTypeRef::Type(TypeBounds::Eq(_)) = i.ty {
                        continue;
                    }
                    out.imports.push(i.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(r) if depth == 1 => {
                for e in r {
                    out.exports.push(e.map_err(read)?.name.name.to_string());
                }
            }
            Payload::CodeSectionStart { size, .. } => out.code_bytes += u64::from(size),
            Payload::CodeSectionEntry(body) => {
                out.functions += 1;
                for local in body.get_locals_reader().map_err(read)? {
                    out.locals += u64::from(local.map_err(read)?.0);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

impl Scan {
    /// Which compile budget the component exceeds, if any: a message naming
    /// the measure, its value and the limit.
    pub fn over_budget(&self) -> Option<String> {
        let checks = [
            ("declared locals", self.locals, MAX_DECLARED_LOCALS),
            ("bytes of code", self.code_bytes, MAX_CODE_BYTES),
            ("core functions", self.functions, MAX_FUNCTIONS),
        ];
        let (what, n, max) = checks.into_iter().find(|(_, n, max)| n > max)?;
        Some(format!(
            "has {n} {what}, over the host's limit of {max} (a bound on compile time); \
             refusing to compile it"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_top_level_names_and_nested_code() {
        let bytes = wat::parse_str(
            r#"(component
                 (import "cdrs:plugin/types@1.0.0" (instance))
                 (type $t (record (field "a" u8)))
                 (import "batch" (type (eq $t)))
                 (core module
                   (func (local i32 i64 i32))
                   (func (param i32) (local f32)))
                 (component
                   (import "inner" (instance))
                   (core module (func (local i32 i32))))
                 (core module $m (func (export "init")))
                 (core instance $i (instantiate $m))
                 (func $init (canon lift (core func $i "init")))
                 (export "init" (func $init)))"#,
        )
        .expect("component text");
        let s = scan(&bytes).expect("scan");
        assert_eq!(s.imports, ["cdrs:plugin/types@1.0.0"]);
        assert_eq!(s.exports, ["init"]);
        assert_eq!(s.locals, 6);
        assert_eq!(s.functions, 4);
        assert!(s.code_bytes > 0);
        assert_eq!(s.over_budget(), None);
    }

    #[test]
    fn unreadable_binaries_are_named() {
        let e = scan(b"\0asm\x0d\0\x01\0\x01\xff").unwrap_err();
        assert!(!e.is_empty());
    }

    #[test]
    fn each_budget_is_named() {
        let s = Scan {
            locals: MAX_DECLARED_LOCALS + 1,
            ..Scan::default()
        };
        let msg = s.over_budget().unwrap();
        assert!(msg.contains("declared locals"), "{msg}");
        assert!(msg.contains(&MAX_DECLARED_LOCALS.to_string()), "{msg}");
        let s = Scan {
            code_bytes: MAX_CODE_BYTES + 1,
            ..Scan::default()
        };
        assert!(s.over_budget().unwrap().contains("bytes of code"));
        let s = Scan {
            functions: MAX_FUNCTIONS + 1,
            ..Scan::default()
        };
        assert!(s.over_budget().unwrap().contains("core functions"));
    }

    /// Prints what the built plugins declare (run with `--nocapture`) and
    /// checks each stays well inside every budget; skipped for plugins not
    /// built.
    #[test]
    fn real_plugins_fit_the_compile_budget() {
        let dir = crate::plugin::tests::plugin_dir();
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("plugin dir") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_none_or(|e| e != "wasm") {
                continue;
            }
            let s = scan(&std::fs::read(&path).expect("read plugin")).expect("scan");
            eprintln!(
                "{}: {} locals, {} code bytes, {} functions",
                path.display(),
                s.locals,
                s.code_bytes,
                s.functions
            );
            assert!(s.locals * 5 < MAX_DECLARED_LOCALS, "{}", path.display());
            assert!(s.code_bytes * 5 < MAX_CODE_BYTES, "{}", path.display());
            assert!(s.functions * 5 < MAX_FUNCTIONS, "{}", path.display());
            seen += 1;
        }
        assert!(seen >= 2, "no plugins in {}", dir.display());
    }
}
