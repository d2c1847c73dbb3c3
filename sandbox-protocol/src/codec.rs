//! Length-prefixed framing with a hard size limit.

use serde::{de::DeserializeOwned, Serialize};

use crate::MAX_FRAME;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Errors decoding or encoding a frame.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The body does not decode as the expected message.
    #[error("malformed frame body")]
    Malformed(#[source] postcard::Error),
    /// The message would not fit in a frame.
    #[error("message of {0} bytes exceeds the {MAX_FRAME}-byte frame limit")]
    TooLarge(usize),
    /// The body decoded but bytes were left over.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// The length prefix announces zero bytes.
    #[error("empty frame")]
    Empty,
}

/// Encodes `msg` as one frame: length prefix and body.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut out = vec![0u8; HEADER_LEN];
    out = postcard::to_extend(msg, out).map_err(ProtocolError::Malformed)?;
    let body = out.len() - HEADER_LEN;
    if body > MAX_FRAME {
        return Err(ProtocolError::TooLarge(body));
    }
    out[..HEADER_LEN].copy_from_slice(&(body as u32).to_le_bytes());
    Ok(out)
}

/// Validates a length prefix and returns the body length it announces.
pub fn decode_len(header: [u8; HEADER_LEN]) -> Result<usize, ProtocolError> {
    let len = u32::from_le_bytes(header) as usize;
    match len {
        0 => Err(ProtocolError::Empty),
        n if n > MAX_FRAME => Err(ProtocolError::TooLarge(n)),
        n => Ok(n),
    }
}

/// Decodes one frame body; the whole body must be consumed.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    let (msg, rest) = postcard::take_from_bytes(body).map_err(ProtocolError::Malformed)?;
    if !rest.is_empty() {
        return Err(ProtocolError::Trailing(rest.len()));
    }
    Ok(msg)
}

/// Incremental decoder: feed it bytes as they arrive, take whole messages.
///
/// Memory stays bounded: it never buffers more than one maximal frame plus
/// what the caller pushed in one call.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next whole message, `Ok(None)` if more bytes are needed.
    /// After an error the stream is out of sync and must be dropped.
    pub fn decode_next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtocolError> {
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; HEADER_LEN];
        len_bytes.copy_from_slice(header);
        let len = decode_len(len_bytes)?;
        let Some(body) = self.buf.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let msg = decode_body(body)?;
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests;
