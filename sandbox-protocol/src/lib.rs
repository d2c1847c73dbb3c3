//! Wire types and framing shared by the host (`sandbox-core`) and the guest
//! agent (`sandbox-guest`). No I/O happens here: callers read and write the
//! bytes; this crate only encodes and validates them.
//!
//! # Framing
//!
//! The guest first writes [`GUEST_MAGIC`] so the host can find the start of
//! the stream even if a console printed noise before the agent started. After
//! that, both directions carry frames: a little-endian `u32` body length
//! followed by the body, a [`postcard`] encoding of [`HostMsg`] (host to
//! guest) or [`GuestMsg`] (guest to host). A length above [`MAX_FRAME`] is
//! rejected before any buffer is allocated, and every decoder returns an
//! error on malformed input instead of panicking.

pub mod cmdline;
mod codec;
mod fs;
mod msg;

pub use codec::{decode_body, decode_len, encode, FrameDecoder, ProtocolError, HEADER_LEN};
pub use fs::*;
pub use msg::*;

/// Version of this protocol. The guest announces it in [`Hello`]; the host
/// refuses an agent that speaks another one.
pub const PROTOCOL_VERSION: u32 = 8;

/// Largest frame body in bytes, checked before allocating.
pub const MAX_FRAME: usize = 1 << 20;

/// Largest payload of one output or input chunk, well below [`MAX_FRAME`].
pub const MAX_CHUNK: usize = 256 << 10;

/// Bytes of output per stream, and of stdin per process, that may be in
/// flight before the receiver grants more credit. Bounds memory on both
/// sides: a producer faster than its consumer blocks instead of buffering.
pub const INITIAL_WINDOW: u32 = 1 << 20;

/// The vsock port the guest agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Bytes the guest writes before its first frame.
pub const GUEST_MAGIC: [u8; 8] = *b"SBXAGNT1";
