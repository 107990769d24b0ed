//! The async frame reader (`meshgate_proto::stream::read_frame_max`) on arbitrary bytes
//! arriving in arbitrary chunks, some reads pending first. It must never panic, must
//! read the same frames and end the same way however the bytes are split, and must never
//! hold more memory than the frame limit allows (a peer's length prefix alone must not
//! make it allocate).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use meshgate_proto::frame::{MAX_FRAME, MAX_HELLO_FRAME};
use meshgate_proto::stream::read_frame_max;
use meshgate_proto::{AgentMsg, CoordMsg};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, ReadBuf};

/// Counts live heap bytes and their peak, to bound what one read holds.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; the counters do not affect the allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(l.size(), Relaxed) + l.size();
        PEAK.fetch_max(live, Relaxed);
        // SAFETY: the caller's contract is `System::alloc`'s.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        // SAFETY: the caller's contract is `System::dealloc`'s.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes handed out in the given chunk sizes (cycled); a chunk size of 0 makes the next
/// read pending once (waking itself), as a network stream does between packets.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    at: usize,
    pended: bool,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let size = match self.sizes.get(self.at % self.sizes.len().max(1)) {
            Some(s) => usize::from(*s),
            None => usize::MAX,
        };
        self.at += 1;
        if size == 0 && !self.pended {
            self.pended = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pended = false;
        let n = size.max(1).min(buf.remaining()).min(self.data.len());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// Every frame until the end or an error (as text), and the most memory one read held
/// beyond what was live before it.
fn read_all<T: DeserializeOwned>(
    mut r: impl AsyncRead + Unpin,
    max: usize,
) -> (Vec<T>, Option<String>, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds");
    let mut out = Vec::new();
    let mut held = 0;
    let end = loop {
        let before = LIVE.load(Relaxed);
        PEAK.store(before, Relaxed);
        let got = rt.block_on(read_frame_max::<T>(&mut r, max));
        held = held.max(PEAK.load(Relaxed) - before);
        match got {
            Ok(Some(m)) => out.push(m),
            Ok(None) => break None,
            Err(e) => break Some(e.to_string()),
        }
    };
    (out, end, held)
}

fn check<T: DeserializeOwned + PartialEq + std::fmt::Debug>(
    stream: &[u8],
    sizes: &[u8],
    max: usize,
) {
    let (whole, whole_end, _) = read_all::<T>(stream, max);
    let chunked = Chunked {
        data: stream,
        sizes,
        at: 0,
        pended: false,
    };
    let (split, split_end, held) = read_all::<T>(chunked, max);
    assert_eq!(whole, split, "the same frames however the bytes arrive");
    assert_eq!(
        whole_end, split_end,
        "the same end however the bytes arrive"
    );
    // The body buffer is at most `max`; what a message decodes to can be larger than its
    // bytes (postcard preallocates a declared sequence length, capped by serde at 1 MiB
    // per sequence), but never more than that per frame.
    let bound = max + (1 << 20) + 64 * 1024;
    assert!(
        held <= bound,
        "one read held {held} bytes with a limit of {max}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&[sel, n_sizes], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let n_sizes = usize::from(n_sizes % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(n_sizes);
    let max = match sel >> 2 {
        0 => MAX_FRAME,
        1 => MAX_HELLO_FRAME,
        m => usize::from(m) * 4,
    };
    if sel & 1 == 0 {
        check::<AgentMsg>(stream, sizes, max);
    } else {
        check::<CoordMsg>(stream, sizes, max);
    }
});
