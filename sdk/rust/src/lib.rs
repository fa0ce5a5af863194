//! Guest SDK for CDRS plugins written in Rust.
//!
//! A plugin is a `cdylib` crate built with `cargo build --target wasm32-wasip2`
//! that enables one feature of this crate, `filter` or `router`, implements the
//! matching trait and names its type in the export macro:
//!
//! ```ignore
//! use cdrs_plugin_sdk::router::*;
//!
//! struct First;
//!
//! impl Router for First {
//!     fn init(_config: &str) -> Result<(Self, RouterOptions), String> {
//!         Ok((First, RouterOptions::default()))
//!     }
//!     fn update_targets(&mut self, _version: u64, _targets: Vec<Target>) {}
//!     fn route(&mut self, batch: Batch) -> Vec<Decision> {
//!         batch.records().map(|_| Decision::Route(0)).collect()
//!     }
//! }
//!
//! cdrs_plugin_sdk::export_router!(First);
//! ```
//!
//! The contract (types, call order, rules the host enforces) is the WIT package
//! `cdrs:plugin@1.1.0` in `sdk/wit/plugin.wit`; this crate only makes it
//! pleasant: plugin state lives in `self`, `init` hands back the instance,
//! [`filter::Record`] / [`router::Record`] are typed views over the flat batch
//! (`record.key()`, `record.header("x")`, ... borrow from the batch's one
//! buffer, nothing is copied), and helpers cover logging and test batches.
//!
//! Plugin logic can be unit-tested natively (`cargo test`): the traits are
//! plain Rust, and [`log`] prints to stderr outside Wasm.
//!
//! The export macros build the contract's packed worlds (`packed-filter`,
//! `packed-router`, since 1.1): a plugin still returns `Vec<Verdict>` /
//! `Vec<Decision>`, and the macro hands the host one code per record
//! ([`filter::pack`], [`router::pack`]), which the host reads as one copy
//! instead of lifting a variant per record.

// Lets the generated bindings name this crate the same way from inside and
// from the plugin crates that expand the export macros.
extern crate self as cdrs_plugin_sdk;

#[doc(hidden)]
#[cfg(any(feature = "filter", feature = "router"))]
pub use wit_bindgen;

#[cfg(feature = "json")]
pub mod json;
pub mod layout;

/// Logging through the host's `log` import (stderr when not on Wasm).
pub mod log {
    /// Log levels, as in the WIT `host.level` enum.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Level {
        Trace,
        Debug,
        Info,
        Warn,
        Error,
    }

    /// Writes `msg` to the host log at `level`, tagged with the plugin name.
    pub fn log(level: Level, msg: &str) {
        crate::imports::log(level, msg)
    }
    pub fn debug(msg: &str) {
        log(Level::Debug, msg)
    }
    pub fn info(msg: &str) {
        log(Level::Info, msg)
    }
    pub fn warn(msg: &str) {
        log(Level::Warn, msg)
    }
    pub fn error(msg: &str) {
        log(Level::Error, msg)
    }
}

/// Wall-clock time from the host, milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    imports::now_ms()
}

/// Host imports, through whichever world's bindings are compiled in.
mod imports {
    use crate::log::Level;

    #[cfg(all(target_arch = "wasm32", feature = "filter"))]
    use crate::filter::bindings::cdrs::plugin::host as h;
    #[cfg(all(target_arch = "wasm32", not(feature = "filter"), feature = "router"))]
    use crate::router::bindings::cdrs::plugin::host as h;

    #[cfg(all(target_arch = "wasm32", any(feature = "filter", feature = "router")))]
    pub fn log(level: Level, msg: &str) {
        let level = match level {
            Level::Trace => h::Level::Trace,
            Level::Debug => h::Level::Debug,
            Level::Info => h::Level::Info,
            Level::Warn => h::Level::Warn,
            Level::Error => h::Level::Error,
        };
        h::log(level, msg)
    }
    #[cfg(all(target_arch = "wasm32", any(feature = "filter", feature = "router")))]
    pub fn now_ms() -> i64 {
        h::now_ms()
    }

    #[cfg(not(all(target_arch = "wasm32", any(feature = "filter", feature = "router"))))]
    pub fn log(level: Level, msg: &str) {
        eprintln!("[{level:?}] {msg}")
    }
    #[cfg(not(all(target_arch = "wasm32", any(feature = "filter", feature = "router"))))]
    pub fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// Typed views over the packed `batch` of the contract, and a builder for
/// test batches. Expanded in each world's module (each has its own
/// generated `Batch` type).
#[cfg(any(feature = "filter", feature = "router"))]
macro_rules! batch_views {
    () => {
        pub use $crate::layout::Record;

        impl Batch {
            /// Number of records.
            pub fn len(&self) -> usize {
                self.count as usize
            }
            /// Whether the batch has no records.
            pub fn is_empty(&self) -> bool {
                self.count == 0
            }
            /// The records in offset order, read in place.
            pub fn records(&self) -> impl ExactSizeIterator<Item = Record<'_>> + '_ {
                $crate::layout::View::new(&self.records, &self.headers, &self.data).iter()
            }
            /// A batch of these records, encoded as the host encodes them
            /// (for unit tests of plugin logic). Each record is `(offset,
            /// key, value, headers)`.
            pub fn of(
                topic: &str,
                partition: i32,
                records: &[(i64, Option<&[u8]>, Option<&[u8]>, &[(&str, Option<&[u8]>)])],
            ) -> Batch {
                let mut t = $crate::layout::Tables::default();
                for (offset, key, value, headers) in records {
                    t.push(*offset, None, *key, *value, headers.iter().copied());
                }
                Batch {
                    topic: topic.to_string(),
                    partition,
                    count: t.count,
                    records: t.records,
                    headers: t.headers,
                    data: t.data,
                }
            }
        }
    };
}

/// The `filter` world: keep, drop, transform or dead-letter each record.
#[cfg(feature = "filter")]
pub mod filter {
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)] // generated: a batch is 10 core parameters
    pub mod bindings {
        wit_bindgen::generate!({
            world: "packed-filter",
            path: "../wit",
            pub_export_macro: true,
            export_macro_name: "__cdrs_export_filter_world",
            default_bindings_module: "::cdrs_plugin_sdk::filter::bindings",
            runtime_path: "::cdrs_plugin_sdk::wit_bindgen::rt",
            additional_derives: [PartialEq, Eq],
        });
    }

    use crate::layout::codes;
    pub use bindings::cdrs::plugin::types::{Batch, Header, Rewrite, Verdict, Verdicts};

    batch_views!();

    impl Record<'_> {
        /// An owned copy of key, value and headers, to edit and return as
        /// `Verdict::Transform`.
        pub fn to_rewrite(&self) -> Rewrite {
            Rewrite {
                key: self.key().map(<[u8]>::to_vec),
                value: self.value().map(<[u8]>::to_vec),
                headers: self
                    .headers()
                    .map(|(k, v)| Header {
                        key: k.to_string(),
                        value: v.map(<[u8]>::to_vec),
                    })
                    .collect(),
            }
        }
    }

    /// `r` rewritten with header `key: value` appended (for `transform`).
    pub fn stamp(r: &Record<'_>, key: &str, value: &str) -> Rewrite {
        let mut rw = r.to_rewrite();
        rw.headers.push(Header {
            key: key.to_string(),
            value: Some(value.as_bytes().to_vec()),
        });
        rw
    }

    /// `verdicts` in the contract's packed form (what the export macro
    /// returns to the host): one code per record, rewrites and reasons in
    /// record order.
    pub fn pack(verdicts: Vec<Verdict>) -> Verdicts {
        let mut packed = Verdicts {
            codes: Vec::with_capacity(verdicts.len()),
            rewrites: Vec::new(),
            reasons: Vec::new(),
        };
        for v in verdicts {
            packed.codes.push(match v {
                Verdict::Keep => codes::KEEP,
                Verdict::Drop => codes::DROP,
                Verdict::Transform(rw) => {
                    packed.rewrites.push(rw);
                    codes::TRANSFORM
                }
                Verdict::DeadLetter(reason) => {
                    packed.reasons.push(reason);
                    codes::DEAD_LETTER
                }
            });
        }
        packed
    }

    /// A filter plugin. One value of this type lives per plugin instance;
    /// the host calls it from one thread at a time.
    pub trait Filter: Sized + 'static {
        /// Builds the filter from its config (the plugin's `config` table
        /// from the CDRS config file, as JSON). An `Err` rejects this plugin
        /// version with that message.
        fn init(config: &str) -> Result<Self, String>;

        /// Returns exactly one verdict per record of `batch`, in order
        /// (iterate with `batch.records()`).
        fn filter(&mut self, batch: Batch) -> Vec<Verdict>;
    }

    /// Exports a [`Filter`] implementation as the component's
    /// `packed-filter` world (verdicts packed with [`pack`]).
    #[macro_export]
    macro_rules! export_filter {
        ($t:ty) => {
            const _: () = {
                use $crate::filter::bindings as __b;
                ::std::thread_local! {
                    static __CDRS_FILTER: ::core::cell::RefCell<::core::option::Option<$t>> =
                        const { ::core::cell::RefCell::new(::core::option::Option::None) };
                }
                pub struct __CdrsFilter;
                impl __b::Guest for __CdrsFilter {
                    fn init(config: String) -> Result<(), String> {
                        let f = <$t as $crate::filter::Filter>::init(&config)?;
                        __CDRS_FILTER.with(|s| *s.borrow_mut() = Some(f));
                        Ok(())
                    }
                    fn filter_packed(batch: __b::Batch) -> __b::Verdicts {
                        __CDRS_FILTER.with(|s| {
                            let mut s = s.borrow_mut();
                            let f = s.as_mut().expect("cdrs host calls init before filter");
                            $crate::filter::pack($crate::filter::Filter::filter(f, batch))
                        })
                    }
                }
                $crate::filter::bindings::__cdrs_export_filter_world!(__CdrsFilter with_types_in $crate::filter::bindings);
            };
        };
    }
}

/// The `router` world: name the target(s) for each record.
#[cfg(feature = "router")]
pub mod router {
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)] // generated: a batch is 10 core parameters
    pub mod bindings {
        wit_bindgen::generate!({
            world: "packed-router",
            path: "../wit",
            pub_export_macro: true,
            export_macro_name: "__cdrs_export_router_world",
            default_bindings_module: "::cdrs_plugin_sdk::router::bindings",
            runtime_path: "::cdrs_plugin_sdk::wit_bindgen::rt",
            additional_derives: [PartialEq, Eq],
        });
    }

    use crate::layout::codes;
    pub use bindings::cdrs::plugin::types::{
        Batch, Decision, Decisions, Health, RouterOptions, Target,
    };

    batch_views!();

    impl Default for RouterOptions {
        /// Key and offset only: no headers, no payload.
        fn default() -> Self {
            RouterOptions {
                headers: Vec::new(),
                needs_value: false,
            }
        }
    }

    /// `decisions` in the contract's packed form (what the export macro
    /// returns to the host): one entry per record, fan-out lists and reasons
    /// in record order. A `Route` index at or past [`codes::FIRST_CODE`]
    /// (out of range for any target table) becomes `default`, as the host
    /// treats an out-of-range index.
    pub fn pack(decisions: Vec<Decision>) -> Decisions {
        let mut packed = Decisions {
            targets: Vec::with_capacity(decisions.len()),
            many: Vec::new(),
            reasons: Vec::new(),
        };
        for d in decisions {
            packed.targets.push(match d {
                Decision::Route(i) if i < codes::FIRST_CODE => i,
                Decision::Route(_) | Decision::Default => codes::ROUTE_DEFAULT,
                Decision::Drop => codes::ROUTE_DROP,
                Decision::RouteMany(targets) => {
                    packed.many.push(targets);
                    codes::ROUTE_MANY
                }
                Decision::DeadLetter(reason) => {
                    packed.reasons.push(reason);
                    codes::ROUTE_DEAD_LETTER
                }
            });
        }
        packed
    }

    /// A router plugin. One value of this type lives per plugin instance;
    /// the host calls it from one thread at a time.
    pub trait Router: Sized + 'static {
        /// Builds the router from its config (JSON) and says which record
        /// fields it needs. An `Err` rejects this plugin version.
        fn init(config: &str) -> Result<(Self, RouterOptions), String>;

        /// The new target table; later decisions index into it. Called
        /// before the first `route` and whenever the table changes.
        fn update_targets(&mut self, version: u64, targets: Vec<Target>);

        /// Returns exactly one decision per record of `batch`, in order
        /// (iterate with `batch.records()`).
        fn route(&mut self, batch: Batch) -> Vec<Decision>;
    }

    /// Exports a [`Router`] implementation as the component's
    /// `packed-router` world (decisions packed with [`pack`]).
    #[macro_export]
    macro_rules! export_router {
        ($t:ty) => {
            const _: () = {
                use $crate::router::bindings as __b;
                ::std::thread_local! {
                    static __CDRS_ROUTER: ::core::cell::RefCell<::core::option::Option<$t>> =
                        const { ::core::cell::RefCell::new(::core::option::Option::None) };
                }
                pub struct __CdrsRouter;
                impl __b::Guest for __CdrsRouter {
                    fn init(config: String) -> Result<__b::RouterOptions, String> {
                        let (r, options) = <$t as $crate::router::Router>::init(&config)?;
                        __CDRS_ROUTER.with(|s| *s.borrow_mut() = Some(r));
                        Ok(options)
                    }
                    fn update_targets(version: u64, targets: Vec<__b::Target>) {
                        __CDRS_ROUTER.with(|s| {
                            let mut s = s.borrow_mut();
                            let r = s.as_mut().expect("cdrs host calls init before update-targets");
                            $crate::router::Router::update_targets(r, version, targets)
                        })
                    }
                    fn route_packed(batch: __b::Batch) -> __b::Decisions {
                        __CDRS_ROUTER.with(|s| {
                            let mut s = s.borrow_mut();
                            let r = s.as_mut().expect("cdrs host calls init before route");
                            $crate::router::pack($crate::router::Router::route(r, batch))
                        })
                    }
                }
                $crate::router::bindings::__cdrs_export_router_world!(__CdrsRouter with_types_in $crate::router::bindings);
            };
        };
    }
}

#[cfg(all(test, feature = "filter", feature = "router"))]
mod tests {
    use crate::layout::codes;

    #[test]
    fn verdicts_pack_one_code_per_record_with_payloads_in_order() {
        use crate::filter::{pack, Rewrite, Verdict};
        let rw = |v: &[u8]| Rewrite {
            key: None,
            value: Some(v.to_vec()),
            headers: vec![],
        };
        let p = pack(vec![
            Verdict::Keep,
            Verdict::DeadLetter("a".into()),
            Verdict::Transform(rw(b"x")),
            Verdict::Drop,
            Verdict::Transform(rw(b"y")),
            Verdict::DeadLetter("b".into()),
        ]);
        assert_eq!(
            p.codes,
            [
                codes::KEEP,
                codes::DEAD_LETTER,
                codes::TRANSFORM,
                codes::DROP,
                codes::TRANSFORM,
                codes::DEAD_LETTER
            ]
        );
        assert_eq!(p.rewrites, vec![rw(b"x"), rw(b"y")]);
        assert_eq!(p.reasons, ["a", "b"]);
    }

    #[test]
    fn decisions_pack_indexes_and_codes() {
        use crate::router::{pack, Decision};
        let p = pack(vec![
            Decision::Route(3),
            Decision::RouteMany(vec![0, 2]),
            Decision::Drop,
            Decision::DeadLetter("no".into()),
            Decision::Default,
            Decision::Route(u32::MAX - 1), // would read as a code: default
            Decision::RouteMany(vec![]),
        ]);
        assert_eq!(
            p.targets,
            [
                3,
                codes::ROUTE_MANY,
                codes::ROUTE_DROP,
                codes::ROUTE_DEAD_LETTER,
                codes::ROUTE_DEFAULT,
                codes::ROUTE_DEFAULT,
                codes::ROUTE_MANY
            ]
        );
        assert_eq!(p.many, vec![vec![0, 2], vec![]]);
        assert_eq!(p.reasons, ["no"]);
    }
}
