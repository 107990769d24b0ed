//! Reading and writing frames on quinn streams, shared by the client and the coordinator.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::frame::{self, FrameError, HEADER_LEN};

/// Why a frame could not be read from or written to a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The bytes were not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The QUIC stream failed on read.
    #[error("read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// The QUIC stream failed on write.
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
}

/// Read one frame. `Ok(None)` when the peer finished the stream between frames.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, StreamError> {
    read_frame_max(recv, frame::MAX_FRAME).await
}

/// [`read_frame`] refusing frames over `max` bytes (before reading their body).
pub async fn read_frame_max<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<T>, StreamError> {
    let mut header = [0u8; HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(StreamError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let len = frame::body_len_max(header, max)?;
    let mut body = vec![0u8; len];
    match recv.read_exact(&mut body).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(StreamError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    Ok(Some(frame::decode_body(&body)?))
}

/// Write one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), StreamError> {
    let bytes = frame::encode(msg)?;
    send.write_all(&bytes).await?;
    Ok(())
}
