//! WebSocket (RFC 6455) for the streaming server: frame codec and handshake key, and a server
//! connection with the Kubernetes channel multiplexing and the SPDY tunnel on top.

mod conn;
pub(crate) mod frame;

pub(crate) use conn::{demux, start, ByteStream};

/// A WebSocket protocol violation; ends the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    #[error("reserved bits set without an extension")]
    Reserved,
    #[error("unknown opcode {opcode}")]
    Opcode { opcode: u8 },
    #[error("malformed control frame")]
    Control,
    #[error("message larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("continuation frame without a message")]
    Continuation,
}
