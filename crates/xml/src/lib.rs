//! The XMPP stream framer and a lazy view of the elements it cuts.
//!
//! This crate owns the byte-level reading of an XML stream (RFC 6120 §4, §11):
//! it finds where the stream header and each top-level element begin and end,
//! enforces hard limits on every byte, and rejects restricted or malformed XML.
//! It performs no I/O and allocates nothing per element on the hot path.
//! It must not make policy decisions: it only says what is there.
#![forbid(unsafe_code)]

mod chars;
mod escape;
pub mod framer;
mod scope;
pub mod view;

pub use framer::{Error, Frame, Framer, Head, Limit, Limits, Namespaces, Token, STREAMS_NS};
