//! Slow-loris protection: poem's server (hyper without a timer) has no header read
//! timeout, so a client that opens connections and dribbles header bytes would hold them
//! for ever. [`GuardedAcceptor`] wraps the TCP acceptor: from a connection's opening, and
//! from the first byte of each later request, the request's headers (up to the blank
//! line) must arrive within `HOOKQ_HEADER_READ_TIMEOUT`, else the connection is dropped.
//! Idle keep-alive connections between requests and response streaming are not timed;
//! webhook bodies have their own deadline (`HOOKQ_BODY_READ_TIMEOUT`, in
//! [`crate::signed`]). HTTP/2 prior-knowledge connections are left alone.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use poem::{
    http::uri::Scheme,
    listener::Acceptor,
    web::{LocalAddr, RemoteAddr},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// An acceptor whose connections enforce the header read timeout.
pub struct GuardedAcceptor<A> {
    inner: A,
    timeout: Duration,
}

impl<A> GuardedAcceptor<A> {
    /// Wraps `inner`; every request's headers must arrive within `timeout`
    /// (`HOOKQ_HEADER_READ_TIMEOUT`).
    pub fn new(inner: A, timeout: Duration) -> Self {
        GuardedAcceptor { inner, timeout }
    }
}

impl<A: Acceptor> Acceptor for GuardedAcceptor<A> {
    type Io = GuardedIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, scheme) = self.inner.accept().await?;
        Ok((GuardedIo::new(io, self.timeout), local, remote, scheme))
    }
}

enum Phase {
    /// Reading a request's headers; `matched` counts the bytes of `\r\n\r\n` seen.
    Headers { matched: usize, seen: usize },
    /// Headers done; the body and the handler are not timed here.
    Body,
    /// A response was written: the next byte read starts a new request.
    Idle,
    /// HTTP/2 or otherwise not ours to time.
    Off,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// A connection with the header deadline.
pub struct GuardedIo<T> {
    inner: T,
    timeout: Duration,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
}

impl<T> GuardedIo<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        GuardedIo {
            inner,
            timeout,
            phase: Phase::Headers {
                matched: 0,
                seen: 0,
            },
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    /// Advances the phase over bytes just read.
    fn scan(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if matches!(self.phase, Phase::Idle) {
            self.phase = Phase::Headers {
                matched: 0,
                seen: 0,
            };
            self.deadline.as_mut().reset(Instant::now() + self.timeout);
        }
        let Phase::Headers { matched, seen } = &mut self.phase else {
            return;
        };
        if *seen == 0
            && bytes.starts_with(&H2_PREFACE[..bytes.len().min(H2_PREFACE.len())])
            && bytes.len() >= 3
        {
            self.phase = Phase::Off;
            return;
        }
        *seen += bytes.len();
        for &b in bytes {
            *matched = match (*matched, b) {
                (0 | 2, b'\r') => *matched + 1,
                (1 | 3, b'\n') => *matched + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if *matched == 4 {
                self.phase = Phase::Body;
                return;
            }
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request headers not received in time (HOOKQ_HEADER_READ_TIMEOUT)",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = buf.filled()[before..].to_vec();
                this.scan(&new);
                if matches!(this.phase, Phase::Headers { .. }) && this.deadline.is_elapsed() {
                    return Poll::Ready(Err(timed_out()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if matches!(this.phase, Phase::Headers { .. })
                    && this.deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(timed_out()));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Any response but `100 Continue` (after which the body follows) ends the request.
        if !matches!(this.phase, Phase::Off) && !data.starts_with(b"HTTP/1.1 100 ") {
            this.phase = Phase::Idle;
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map(|b| &b[..])
            .unwrap_or(&[]);
        if !matches!(this.phase, Phase::Off) && !first.starts_with(b"HTTP/1.1 100 ") {
            this.phase = Phase::Idle;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn headers_end_at_the_blank_line_even_split_across_reads() {
        let mut g = GuardedIo::new((), Duration::from_secs(1));
        g.scan(b"POST / HTTP/1.1\r\nHost: x\r");
        assert!(matches!(g.phase, Phase::Headers { .. }));
        g.scan(b"\n\r");
        g.scan(b"\nbody");
        assert!(matches!(g.phase, Phase::Body));
        let mut h2 = GuardedIo::new((), Duration::from_secs(1));
        h2.scan(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(matches!(h2.phase, Phase::Off));
    }
}
