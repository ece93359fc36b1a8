//! A read buffer beneath TLS. rustls asks its transport for at most 4 KiB per read, so a
//! 16 KiB record cost four `read` syscalls and four wake-ups of its decoder: at a few Gbit/s that
//! is a hundred thousand syscalls a second per connection. [`ReadAhead`] can read up to a
//! configured size per syscall and serve rustls's small reads from memory (off unless
//! `--hbone-read-ahead` sets a size: see [`ReadAhead::new`]).
//!
//! The buffer exists only while bulk data flows: a read goes straight into the caller's buffer
//! until one fills it (the socket had more than was asked for), and only then does the next read
//! take a read-ahead buffer; the buffer is freed, and direct reads resume, as soon as it is
//! drained and the socket has nothing more. So an idle HBONE connection holds no read buffer,
//! and handshake flights smaller than one read allocate none. Writes pass straight
//! through (vectored).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A read-ahead size that turns a 16 KiB record's four reads into one.
pub const READ_AHEAD: usize = 64 * 1024;

/// The largest read-ahead a configuration may ask for.
pub const MAX_READ_AHEAD: u32 = 1024 * 1024;

/// Wraps a transport (a `TcpStream`) with a read-ahead buffer; see the module docs.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Read and not yet handed on; no allocation while the connection is quiet. Filled through
    /// its spare capacity, so a fresh buffer is never zeroed.
    buf: BytesMut,
    /// The last direct read filled the caller's buffer: data is streaming, read ahead.
    streaming: bool,
    /// Bytes per read-ahead; 0: off.
    size: usize,
}

impl<S> ReadAhead<S> {
    /// Reads ahead up to `size` bytes per syscall once data streams; 0: never (rustls reads
    /// the socket directly). Off by default in the proxies (`--hbone-read-ahead`): on the
    /// 2-core sandbox it cut syscalls per MiB by a third but cost 4–6 % more CPU per byte, the
    /// extra copy weighing more than the saved syscalls (docs/performance.md).
    pub fn new(inner: S, size: usize) -> Self {
        ReadAhead { inner, buf: BytesMut::new(), streaming: false, size: size.min(MAX_READ_AHEAD as usize) }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Bytes read from the socket and not yet handed on (tests).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether a read buffer is held (tests: idle connections hold none).
    pub fn holds_buffer(&self) -> bool {
        self.buf.capacity() > 0
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buf.is_empty() {
            // A caller with room for a whole read-ahead gains nothing from the copy, and until
            // a read shows more waiting than was asked for, neither does a quiet connection.
            let size = this.size;
            if size == 0 || out.remaining() >= size || !this.streaming {
                this.buf = BytesMut::new();
                let asked = out.remaining();
                let before = out.filled().len();
                let read = Pin::new(&mut this.inner).poll_read(cx, out);
                this.streaming =
                    matches!(read, Poll::Ready(Ok(()))) && asked > 0 && out.filled().len() - before == asked;
                return read;
            }
            // Reuses the allocation from its start once it is drained.
            this.buf.reserve(size);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buf) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                other => {
                    // Nothing flowing (or the end): an idle connection keeps no buffer.
                    this.buf = BytesMut::new();
                    this.streaming = false;
                    ready!(other)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_small_reads_from_one_large_read_and_frees_when_idle() {
        let (mut a, b) = tokio::io::duplex(256 * 1024);
        let mut reader = ReadAhead::new(b, READ_AHEAD);
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        a.write_all(&data).await.unwrap();
        let mut got = vec![0u8; 4096];
        // The first read goes straight to the caller and fills its buffer: more is waiting.
        reader.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..], &data[..4096]);
        assert!(!reader.holds_buffer(), "no buffer until a read shows data streaming");
        // The next read took everything the peer had written; the rest is served from memory.
        reader.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..], &data[4096..8192]);
        assert_eq!(reader.buffered(), data.len() - 8192);
        let mut rest = vec![0u8; data.len() - 8192];
        reader.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest[..], &data[8192..]);
        // Drained, and the next read blocks: the buffer is released.
        let mut one = [0u8; 1];
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), reader.read(&mut one)).await;
        assert!(pending.is_err(), "no data was written");
        assert!(!reader.holds_buffer(), "an idle connection keeps no read buffer");
        // EOF passes through.
        drop(a);
        assert_eq!(reader.read(&mut one).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn size_zero_reads_the_socket_directly() {
        let (mut a, b) = tokio::io::duplex(256 * 1024);
        let mut reader = ReadAhead::new(b, 0);
        a.write_all(&[3u8; 20_000]).await.unwrap();
        let mut got = [0u8; 4096];
        for _ in 0..3 {
            reader.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [3u8; 4096]);
            assert_eq!(reader.buffered(), 0, "off: nothing is read ahead");
            assert!(!reader.holds_buffer());
        }
    }

    #[tokio::test]
    async fn small_messages_never_take_a_buffer() {
        let (mut a, b) = tokio::io::duplex(256 * 1024);
        let mut reader = ReadAhead::new(b, READ_AHEAD);
        let mut got = [0u8; 4096];
        for round in 0..5u8 {
            a.write_all(&[round; 300]).await.unwrap();
            let n = reader.read(&mut got).await.unwrap();
            assert_eq!(&got[..n], &[round; 300][..]);
            assert!(!reader.holds_buffer(), "a message smaller than the read needs no read-ahead");
        }
    }

    #[tokio::test]
    async fn large_reads_bypass_the_buffer_and_writes_pass_through() {
        let (mut a, b) = tokio::io::duplex(256 * 1024);
        let mut reader = ReadAhead::new(b, READ_AHEAD);
        a.write_all(&[7u8; 1000]).await.unwrap();
        let mut big = vec![0u8; READ_AHEAD];
        let n = reader.read(&mut big).await.unwrap();
        assert_eq!(n, 1000);
        assert!(!reader.holds_buffer());
        reader.write_all(b"pong").await.unwrap();
        let mut back = [0u8; 4];
        a.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");
    }
}
