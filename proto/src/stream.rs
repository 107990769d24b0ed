//! Reading and writing frames on streams, shared by the client and the coordinator. The
//! reader takes any [`AsyncRead`] (a quinn `RecvStream` in production, bytes in memory in
//! the tests and the `frame_reader` fuzz target), so the code that parses a peer's bytes
//! is the code that is fuzzed.

use std::io;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt as _};

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
    /// The stream failed on read.
    #[error("read failed: {0}")]
    Read(#[from] io::Error),
    /// The QUIC stream failed on write.
    #[cfg(feature = "client")]
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
}

/// Read one frame. `Ok(None)` when the peer finished the stream between frames.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut (impl AsyncRead + Unpin + ?Sized),
) -> Result<Option<T>, StreamError> {
    read_frame_max(recv, frame::MAX_FRAME).await
}

/// [`read_frame`] refusing frames over `max` bytes (before reading their body, so a
/// peer never makes it buffer more than `max`).
pub async fn read_frame_max<T: DeserializeOwned>(
    recv: &mut (impl AsyncRead + Unpin + ?Sized),
    max: usize,
) -> Result<Option<T>, StreamError> {
    let mut header = [0u8; HEADER_LEN];
    match fill(recv, &mut header).await? {
        0 => return Ok(None),
        HEADER_LEN => {}
        _ => return Err(StreamError::Truncated),
    }
    let len = frame::body_len_max(header, max)?;
    let mut body = vec![0u8; len];
    if fill(recv, &mut body).await? != len {
        return Err(StreamError::Truncated);
    }
    Ok(Some(frame::decode_body(&body)?))
}

/// Reads until `buf` is full or the stream ends; returns how many bytes it got.
async fn fill<R: AsyncRead + Unpin + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Write one frame.
#[cfg(feature = "client")]
pub async fn write_frame<T: serde::Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), StreamError> {
    let bytes = frame::encode(msg)?;
    send.write_all(&bytes).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::AgentMsg;

    fn read_all(bytes: &[u8], max: usize) -> (Vec<AgentMsg>, Option<String>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds");
        rt.block_on(async {
            let mut r = bytes;
            let mut out = Vec::new();
            loop {
                match read_frame_max::<AgentMsg>(&mut r, max).await {
                    Ok(Some(m)) => out.push(m),
                    Ok(None) => return (out, None),
                    Err(e) => return (out, Some(e.to_string())),
                }
            }
        })
    }

    #[test]
    fn frames_then_a_clean_end_a_cut_header_or_body_is_truncated() {
        let mut bytes = frame::encode(&AgentMsg::Heartbeat { seq: 7 }).unwrap();
        bytes.extend(frame::encode(&AgentMsg::Goodbye).unwrap());
        let all = vec![AgentMsg::Heartbeat { seq: 7 }, AgentMsg::Goodbye];
        assert_eq!(read_all(&bytes, frame::MAX_FRAME), (all, None));
        let cut = read_all(&bytes[..bytes.len() - 1], frame::MAX_FRAME);
        assert_eq!(cut.1.as_deref(), Some("stream ended inside a frame"));
        let (_, e) = read_all(&bytes[..2], frame::MAX_FRAME);
        assert_eq!(e.as_deref(), Some("stream ended inside a frame"));
        let (_, e) = read_all(&bytes, 1);
        assert!(e.unwrap().contains("exceeds the limit"));
    }
}
