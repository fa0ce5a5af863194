//! Contract versions and what a component asks of the host.
//!
//! The contract is the WIT package `cdrs:plugin@MAJOR.MINOR.PATCH` in
//! `sdk/wit/plugin.wit`; the host implements the version written there. A
//! component carries the version it was built against in the names of its
//! imports (`cdrs:plugin/types@1.0.0`, `cdrs:plugin/host@1.0.0`): every
//! world uses the `types` interface, so every plugin imports it.
//!
//! Rule: the host accepts plugins built against any version with the same
//! major (semver: 1.x adds, never breaks), and refuses others with a message
//! naming both versions. Before 1.0 each 0.x was its own major.
//!
//! A component's other imports are checked against what the host grants:
//! `cdrs:plugin/host` (log, clock), and WASI 0.2 (linked because
//! componentize-py and componentize-js import it, with nothing granted:
//! no preopened directories, environment, arguments or sockets).

use std::fmt;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::Component;
use wasmtime::Engine;

/// The contract this host implements, as written in `sdk/wit/plugin.wit`.
pub const WIT: &str = include_str!("../../../sdk/wit/plugin.wit");

/// WIT package name of the contract.
pub const PACKAGE: &str = "cdrs:plugin";

/// A semantic version `major.minor.patch` (no pre-release part: the
/// contract does not use one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Version {
    /// Parses `1.2.3`; none for anything else.
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.').map(|p| p.parse::<u64>().ok());
        let v = Version {
            major: it.next()??,
            minor: it.next()??,
            patch: it.next()??,
        };
        it.next().is_none().then_some(v)
    }

    /// Whether a plugin built against `self` runs on a host implementing
    /// `host`: same major, and for 0.x the same minor (semver's rule for
    /// pre-1.0 versions).
    pub fn runs_on(&self, host: &Version) -> bool {
        self.major == host.major && (self.major > 0 || self.minor == host.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The contract version this host implements (from the WIT file's
/// `package cdrs:plugin@X.Y.Z;` line).
pub fn host_version() -> Version {
    WIT.lines()
        .find_map(|l| l.trim().strip_prefix("package cdrs:plugin@"))
        .and_then(|v| Version::parse(v.trim_end_matches(';')))
        .expect("sdk/wit/plugin.wit declares `package cdrs:plugin@X.Y.Z;`")
}

/// The exports each world needs, router first (a router exports `init`
/// too): per world, a list of requirements, each a list of alternatives of
/// which one will do (the plain or the packed form of contract 1.1). The one
/// list both the check before compiling ([`crate::plugin::scan`]) and
/// [`Inspection::of`] read.
const WORLD_EXPORTS: &[(&str, &[&[&str]])] = &[
    (
        "router",
        &[&["init"], &["route", "route-packed"], &["update-targets"]],
    ),
    ("filter", &[&["init"], &["filter", "filter-packed"]]),
];

/// Exports that make a component answer in packed form (the worlds
/// `packed-filter` / `packed-router` of contract 1.1).
const PACKED_EXPORTS: &[&str] = &["route-packed", "filter-packed"];

/// What `world` (`filter` or `router`) needs that `exports` lacks, one
/// entry per missing export, alternatives joined (`"route" or
/// "route-packed"`); empty when the exports fit.
pub fn missing_exports(world: &str, exports: &[String]) -> Vec<String> {
    let has = |n: &str| exports.iter().any(|e| e == n);
    let Some((_, needs)) = WORLD_EXPORTS.iter().find(|(w, _)| *w == world) else {
        return vec![format!("(no world named {world:?})")];
    };
    needs
        .iter()
        .filter(|any| !any.iter().any(|n| has(n)))
        .map(|any| {
            any.iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(" or ")
        })
        .collect()
}

/// The world whose exports `exports` has (`router` or `filter`); none if
/// it fits neither.
pub fn world_of(exports: &[String]) -> Option<&'static str> {
    WORLD_EXPORTS
        .iter()
        .find(|(w, _)| missing_exports(w, exports).is_empty())
        .map(|(w, _)| *w)
}

/// How the host treats one import of a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Part of the contract (`cdrs:plugin/…`): given.
    Contract,
    /// WASI 0.2: linked, but the context grants nothing.
    WasiNothingGranted,
    /// Not provided: the component cannot be loaded.
    Refused,
}

impl Grant {
    /// How the host treats an import named `name`
    /// (`cdrs:plugin/host@1.0.0`, `wasi:cli/environment@0.2.3`, …).
    pub fn of(name: &str) -> Grant {
        if name.starts_with("cdrs:plugin/") {
            Grant::Contract
        } else if name.starts_with("wasi:") {
            Grant::WasiNothingGranted
        } else {
            Grant::Refused
        }
    }
}

/// The contract version a `cdrs:plugin/…@X.Y.Z` import name carries.
fn contract_version(name: &str) -> Option<Version> {
    let rest = name.strip_prefix("cdrs:plugin/")?;
    rest.split_once('@').and_then(|(_, v)| Version::parse(v))
}

/// One import of a component.
#[derive(Debug, Clone)]
pub struct Import {
    /// Import name, e.g. `cdrs:plugin/host@1.0.0` or `wasi:cli/environment@0.2.3`.
    pub name: String,
    /// Functions of an imported instance (empty for type-only imports).
    pub functions: Vec<String>,
    pub grant: Grant,
}

/// What a component is, read from its type (no instantiation).
#[derive(Debug, Clone)]
pub struct Inspection {
    /// `filter` or `router`, from its exports; none if it fits neither.
    pub world: Option<&'static str>,
    /// Whether it answers in packed form (`filter-packed` / `route-packed`,
    /// the worlds `packed-filter` / `packed-router` of contract 1.1).
    pub packed: bool,
    /// Contract versions named by its `cdrs:plugin/…` imports (one, normally).
    pub versions: Vec<Version>,
    pub imports: Vec<Import>,
    /// Exported names (functions and instances).
    pub exports: Vec<String>,
}

impl Inspection {
    /// Reads `component`'s imports and exports.
    pub fn of(engine: &Engine, component: &Component) -> Inspection {
        let ty = component.component_type();
        let imports = ty.imports(engine).map(|(name, item)| {
            let functions = match &item.ty {
                ComponentItem::ComponentInstance(i) => {
                    i.exports(engine).map(|(n, _)| n.to_string()).collect()
                }
                _ => Vec::new(),
            };
            (name.to_string(), functions)
        });
        let exports = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        Inspection::from_names(imports, exports)
    }

    /// An inspection from top-level import names (with the functions of
    /// each imported instance, if known) and export names, as read from the
    /// component's type or, before compiling, from its binary.
    pub fn from_names(
        imports: impl IntoIterator<Item = (String, Vec<String>)>,
        exports: Vec<String>,
    ) -> Inspection {
        let mut versions = Vec::new();
        let imports = imports
            .into_iter()
            .map(|(name, functions)| {
                if let Some(v) = contract_version(&name) {
                    if !versions.contains(&v) {
                        versions.push(v);
                    }
                }
                Import {
                    grant: Grant::of(&name),
                    name,
                    functions,
                }
            })
            .collect();
        let world = world_of(&exports);
        let packed = PACKED_EXPORTS
            .iter()
            .any(|p| exports.iter().any(|e| e == p));
        versions.sort();
        Inspection {
            world,
            packed,
            versions,
            imports,
            exports,
        }
    }

    /// The contract version the component was built against: the highest
    /// one its imports name.
    pub fn version(&self) -> Option<Version> {
        self.versions.last().copied()
    }

    /// Imports the host does not provide.
    pub fn refused(&self) -> impl Iterator<Item = &Import> {
        self.imports.iter().filter(|i| i.grant == Grant::Refused)
    }

    /// Why the host refuses this component's contract version, if it does:
    /// a message naming both versions.
    pub fn version_problem(&self) -> Option<String> {
        let host = host_version();
        let range = if host.major > 0 {
            format!("{}.x", host.major)
        } else {
            format!("0.{}.x", host.minor)
        };
        match self.version() {
            None => Some(format!(
                "imports no {PACKAGE} interface, so it was not built against the contract \
                 (this host implements {PACKAGE}@{host} and accepts plugins built against {range})"
            )),
            Some(v) if !v.runs_on(&host) => Some(format!(
                "was built against {PACKAGE}@{v}, but this host implements {PACKAGE}@{host} \
                 and accepts plugins built against {range}; rebuild it with the SDK of {range}"
            )),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare_by_semver() {
        let v = |s| Version::parse(s).unwrap();
        assert_eq!(v("1.2.3").to_string(), "1.2.3");
        assert!(Version::parse("1.2").is_none());
        assert!(Version::parse("1.2.3.4").is_none());
        assert!(Version::parse("1.x.0").is_none());
        assert!(v("1.0.0").runs_on(&v("1.0.0")));
        assert!(v("1.3.1").runs_on(&v("1.0.0")));
        assert!(v("1.0.0").runs_on(&v("1.4.0")));
        assert!(!v("0.2.0").runs_on(&v("1.0.0")));
        assert!(!v("2.0.0").runs_on(&v("1.0.0")));
        assert!(!v("0.2.0").runs_on(&v("0.3.0")));
        assert!(v("0.2.1").runs_on(&v("0.2.0")));
    }

    #[test]
    fn the_host_version_comes_from_the_wit_file() {
        assert_eq!(host_version().major, 1);
    }

    fn inspect(wat: &str) -> Inspection {
        let engine = Engine::default();
        let bytes = wat::parse_str(wat).expect("valid component text");
        let c = Component::new(&engine, bytes).expect("valid component");
        Inspection::of(&engine, &c)
    }

    #[test]
    fn old_and_foreign_imports_are_named() {
        let i = inspect(
            r#"(component
                 (import "cdrs:plugin/host@0.2.0" (instance (export "now-ms" (func (result s64)))))
                 (import "acme:db/query" (instance))
                 (import "wasi:cli/environment@0.2.3" (instance)))"#,
        );
        assert_eq!(i.version(), Version::parse("0.2.0"));
        let problem = i.version_problem().unwrap();
        assert!(problem.contains("cdrs:plugin@0.2.0"), "{problem}");
        assert!(
            problem.contains(&format!("cdrs:plugin@{}", host_version())),
            "{problem}"
        );
        let refused: Vec<_> = i.refused().map(|i| i.name.as_str()).collect();
        assert_eq!(refused, ["acme:db/query"]);
        assert_eq!(i.imports[0].functions, ["now-ms"]);
        assert_eq!(i.world, None);
    }

    #[test]
    fn worlds_are_read_from_one_list_of_exports() {
        let names = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(world_of(&names(&["init", "filter"])), Some("filter"));
        assert_eq!(world_of(&names(&["init", "filter-packed"])), Some("filter"));
        let router = names(&["init", "route-packed", "update-targets"]);
        assert_eq!(world_of(&router), Some("router"));
        assert!(missing_exports("router", &router).is_empty());
        assert_eq!(world_of(&names(&["route"])), None);
        assert_eq!(
            missing_exports("router", &names(&["route"])),
            [r#""init""#, r#""update-targets""#]
        );
        assert_eq!(
            missing_exports("filter", &[]),
            [r#""init""#, r#""filter" or "filter-packed""#]
        );
        assert_eq!(
            Grant::of("wasi:io/streams@0.2.3"),
            Grant::WasiNothingGranted
        );
        assert_eq!(Grant::of("cdrs:plugin/host@1.1.0"), Grant::Contract);
        assert_eq!(Grant::of("cdrs:pluginx/host"), Grant::Refused);
    }

    #[test]
    fn a_later_minor_of_the_same_major_is_accepted() {
        let host = host_version();
        let later = format!("{}.{}.0", host.major, host.minor + 3);
        let i = inspect(&format!(
            r#"(component (import "cdrs:plugin/types@{later}" (instance)))"#
        ));
        assert_eq!(i.version_problem(), None);
        let i = inspect(r#"(component (import "cdrs:plugin/types@2.0.0" (instance)))"#);
        assert!(i.version_problem().unwrap().contains("cdrs:plugin@2.0.0"));
        let i = inspect("(component)");
        assert!(i
            .version_problem()
            .unwrap()
            .contains("imports no cdrs:plugin"));
    }
}
