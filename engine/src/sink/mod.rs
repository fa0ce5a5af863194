//! Sinks: where records leave CDRS. `http` delivers to application servers;
//! `kafka` writes the dead-letter topic.

pub mod http;
pub mod kafka;
