//! Bidirectional copy between two byte streams with adaptive buffers and byte counting.
//!
//! Each direction starts with a small buffer, so an idle connection costs little, and grows
//! as that direction proves to carry bulk data. Half-close is propagated: when one side ends
//! its writes, the other side's write half is shut down and the opposite direction keeps
//! flowing until it ends too. Owns no sockets and no telemetry; callers record the counts.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// First buffer of each direction: enough for a typical request line or small RPC.
pub const INITIAL_BUFFER: usize = 1024;
/// After this much data a direction is "busy": one TLS record's worth of payload minus framing.
pub const LARGE_BUFFER: usize = 16 * 1024 - 64;
/// After this much data a direction is "bulk": sixteen records per read keeps syscalls per byte low.
pub const JUMBO_BUFFER: usize = 16 * (16 * 1024) - 64;
const LARGE_AFTER: u64 = 128 * 1024;
const JUMBO_AFTER: u64 = 10 * 1024 * 1024;

/// Which way data was flowing when a copy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the first stream to the second.
    AToB,
    /// From the second stream to the first.
    BToA,
}

/// Which half of the operation failed: the source (read) or the sink (write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

#[derive(Debug, thiserror::Error)]
#[error("copy {direction:?} failed on {op:?}: {source}")]
pub struct CopyError {
    pub direction: Direction,
    pub op: Op,
    #[source]
    pub source: io::Error,
}

/// Bytes moved each way, whether or not the copy ended cleanly.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

struct OneWay {
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    amount: u64,
    read_done: bool,
    need_flush: bool,
    done: bool,
}

impl OneWay {
    fn new() -> Self {
        OneWay {
            buf: vec![0u8; INITIAL_BUFFER].into_boxed_slice(),
            pos: 0,
            end: 0,
            amount: 0,
            read_done: false,
            need_flush: false,
            done: false,
        }
    }

    /// Grows the buffer when it is empty and the direction has carried enough to deserve it.
    fn maybe_grow(&mut self) {
        let want = if self.amount >= JUMBO_AFTER {
            JUMBO_BUFFER
        } else if self.amount >= LARGE_AFTER {
            LARGE_BUFFER
        } else {
            return;
        };
        if self.buf.len() < want {
            self.buf = vec![0u8; want].into_boxed_slice();
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<Result<(), (Op, io::Error)>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.end && !self.read_done {
                self.pos = 0;
                self.end = 0;
                self.maybe_grow();
                let mut rb = ReadBuf::new(&mut self.buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx)).map_err(|e| (Op::Write, e))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((Op::Read, e))),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.end = n;
                        }
                    }
                }
            }
            while self.pos < self.end {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.end])).map_err(|e| (Op::Write, e))?;
                if n == 0 {
                    return Poll::Ready(Err((Op::Write, io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
                self.amount += n as u64;
                self.need_flush = true;
            }
            if self.read_done {
                ready!(w.as_mut().poll_flush(cx)).map_err(|e| (Op::Write, e))?;
                ready!(w.as_mut().poll_shutdown(cx)).map_err(|e| (Op::Write, e))?;
                self.done = true;
                // Free the buffer: the other direction may stay open for a long time.
                self.buf = Box::new([]);
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Copies `a` → `b` and `b` → `a` until both directions have ended, or one fails.
/// Returns the bytes moved each way; on failure, the error and the bytes moved until then.
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> (Transferred, Option<CopyError>)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut ab = OneWay::new();
    let mut ba = OneWay::new();
    let result = poll_fn(|cx| {
        if !ab.done {
            if let Poll::Ready(Err((op, source))) = ab.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b)) {
                return Poll::Ready(Err(CopyError { direction: Direction::AToB, op, source }));
            }
        }
        if !ba.done {
            if let Poll::Ready(Err((op, source))) = ba.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a)) {
                return Poll::Ready(Err(CopyError { direction: Direction::BToA, op, source }));
            }
        }
        if ab.done && ba.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await;
    (Transferred { a_to_b: ab.amount, b_to_a: ba.amount }, result.err())
}

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn copies_both_ways_with_half_close_and_counts() {
        let (mut client, mut a) = duplex(64 * 1024);
        let (mut b, mut server) = duplex(64 * 1024);
        let copier = tokio::spawn(async move { copy_bidirectional(&mut a, &mut b).await });

        let payload: Vec<u8> = (0..(3 * 1024 * 1024)).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap(); // half-close: server must see EOF
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).await.unwrap();
            reply
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        // The other direction still works after the half-close.
        server.write_all(b"thanks").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"thanks");
        let (moved, err) = copier.await.unwrap();
        assert!(err.is_none(), "{err:?}");
        assert_eq!(moved, Transferred { a_to_b: payload.len() as u64, b_to_a: 6 });
    }

    #[test]
    fn buffers_grow_with_traffic() {
        let mut one = OneWay::new();
        assert_eq!(one.buf.len(), INITIAL_BUFFER);
        one.amount = LARGE_AFTER;
        one.maybe_grow();
        assert_eq!(one.buf.len(), LARGE_BUFFER);
        one.amount = JUMBO_AFTER;
        one.maybe_grow();
        assert_eq!(one.buf.len(), JUMBO_BUFFER);
    }
}
