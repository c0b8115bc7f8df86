//! The namespace prefixes in scope while the framer reads (Namespaces in XML 1.0
//! §5.1): which prefix is bound to which namespace name, at which depth.
//!
//! Only prefixed declarations (`xmlns:p='...'`) are kept: the framer never needs
//! the default namespace of an element, only that every prefix used is declared
//! and that no element carries two attributes with the same expanded name. The
//! stream header's declarations (depth 0) stay for the whole stream.
//!
//! Prefixes and namespace names are copied into one reused byte buffer, because
//! the bytes they were read from leave the caller's buffer with their frame.

use std::ops::Range;

/// A namespace name stored in the scope.
pub(crate) type UriRange = Range<usize>;

#[derive(Debug, Clone)]
struct Declaration {
    /// `bytes[start..uri_start]` is the prefix, `bytes[uri_start..end]` the name.
    start: usize,
    uri_start: usize,
    end: usize,
    depth: usize,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    bytes: Vec<u8>,
    declarations: Vec<Declaration>,
}

impl Scope {
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.declarations.clear();
    }

    /// Binds `prefix` at `depth` to the namespace name `fill` appends to the buffer.
    pub(crate) fn declare(&mut self, prefix: &[u8], depth: usize, fill: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(prefix);
        let uri_start = self.bytes.len();
        fill(&mut self.bytes);
        self.declarations.push(Declaration {
            start,
            uri_start,
            end: self.bytes.len(),
            depth,
        });
    }

    /// The namespace name of the last declaration made.
    pub(crate) fn last_uri(&self) -> &[u8] {
        match self.declarations.last() {
            Some(d) => &self.bytes[d.uri_start..d.end],
            None => &[],
        }
    }

    /// The innermost binding of `prefix`.
    pub(crate) fn lookup(&self, prefix: &[u8]) -> Option<UriRange> {
        self.declarations
            .iter()
            .rev()
            .find(|d| &self.bytes[d.start..d.uri_start] == prefix)
            .map(|d| d.uri_start..d.end)
    }

    pub(crate) fn uri(&self, range: UriRange) -> &[u8] {
        self.bytes.get(range).unwrap_or_default()
    }

    /// Forgets the declarations of elements deeper than `depth`.
    pub(crate) fn leave_deeper_than(&mut self, depth: usize) {
        while let Some(d) = self.declarations.last() {
            if d.depth <= depth {
                break;
            }
            self.bytes.truncate(d.start);
            self.declarations.pop();
        }
    }
}
