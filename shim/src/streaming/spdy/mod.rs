//! SPDY/3.1 as Kubernetes uses it (moby/spdystream): frame codec, zlib header compression with
//! the SPDY/3 dictionary, and a server session that hands out client-initiated streams.

mod conn;
mod dictionary;
pub(crate) mod frame;
mod headers;
mod zlib;

pub(crate) use conn::{start, SpdyStream, StreamWriter};

/// A SPDY protocol or compression failure; ends the session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpdyError {
    #[error("unsupported SPDY version {version}")]
    Version { version: u16 },
    #[error("malformed {what} frame")]
    Malformed { what: &'static str },
    #[error("header block: {reason}")]
    HeaderBlock { reason: &'static str },
    #[error("zlib {op} of a header block")]
    Zlib {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
