//! Sinks: where records leave CDRS. `http` delivers to application servers;
//! `kafka` writes the dead-letter topic and `kafka://` targets; `sse`
//! keeps the streams of `sse://` targets.

pub mod http;
pub mod kafka;
pub mod sse;
