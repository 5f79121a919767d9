//! Yamux that ends a connection on the peer's protocol errors and stream floods.
//!
//! - On a protocol error (data over a stream's window, too many streams, a frame for a
//!   stream that cannot be) yamux 0.14 writes a GoAway with an error code and then keeps
//!   reading, waiting for the peer to close. A hostile peer does not, and keeps the
//!   connection and its slot until the idle timeout.
//! - yamux resets the streams libp2p has no room for (25 waiting, 128 negotiating), but
//!   lets a peer open new ones as fast as it can write: tens of thousands a second on one
//!   connection, each a negotiation or a reset of ours.
//!
//! [`Watched`] sits between Noise and yamux and follows the frames in both directions
//! (headers only, sans I/O). Once a GoAway with an error code is flushed, or the peer opens
//! streams faster than [`INBOUND_STREAMS`] allows, the next read fails: yamux ends the
//! connection and the swarm reports it closed with a [`MuxerError`] as its cause, which
//! the node scores ([`peer_fault`], which also finds the frames yamux could not decode).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use chainmesh_behaviours::Quota;
use chainmesh_behaviours::peers::Fault;
use chainmesh_behaviours::rate_limit::Bucket;
use futures::{AsyncRead, AsyncWrite};
use libp2p::core::UpgradeInfo;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};

/// New streams a peer may open on one connection: a burst of 512 (yamux's own cap on open
/// streams), then 128 a second. An honest node opens a few a second for each protocol
/// (sync at most 50 requests a second, which is what it advertises).
pub const INBOUND_STREAMS: Quota = Quota {
    per_second: 128.0,
    burst: 512,
};

/// yamux's frame header: version, type, flags (2), stream id (4), length (4).
const HEADER: usize = 12;
const TYPE_DATA: u8 = 0;
const TYPE_WINDOW_UPDATE: u8 = 1;
const TYPE_GO_AWAY: u8 = 3;
const FLAG_SYN: u16 = 1;

/// Follows yamux frame boundaries in one direction of a byte stream, sans I/O.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; HEADER],
    have: usize,
    body_left: u64,
}

/// A frame header: its type, flags and length.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Header {
    kind: u8,
    flags: u16,
    length: u32,
}

impl Frames {
    /// Feeds the bytes that went through; calls `on_header` for each complete header.
    fn feed(&mut self, mut buf: &[u8], mut on_header: impl FnMut(Header)) {
        while !buf.is_empty() {
            if self.body_left > 0 {
                let k = buf
                    .len()
                    .min(usize::try_from(self.body_left).unwrap_or(usize::MAX));
                self.body_left -= k as u64;
                buf = &buf[k..];
                continue;
            }
            let k = buf.len().min(HEADER - self.have);
            self.header[self.have..self.have + k].copy_from_slice(&buf[..k]);
            self.have += k;
            buf = &buf[k..];
            if self.have == HEADER {
                self.have = 0;
                let h = &self.header;
                let header = Header {
                    kind: h[1],
                    flags: u16::from_be_bytes([h[2], h[3]]),
                    length: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
                };
                if header.kind == TYPE_DATA {
                    self.body_left = u64::from(header.length);
                }
                on_header(header);
            }
        }
    }
}

/// Why the node ended a connection at the muxer.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum MuxerError {
    /// yamux sent a GoAway with this code (1: protocol error, 2: internal error, such as
    /// its stream cap).
    #[error("yamux sent GoAway (error code {0}) on the peer's protocol error")]
    GoAwaySent(u32),
    #[error(
        "the peer opened streams faster than {per_second} a second (after a burst of {burst}): {opened} on this connection"
    )]
    StreamFlood {
        per_second: f64,
        burst: u32,
        opened: u64,
    },
}

impl MuxerError {
    pub fn fault(&self) -> Fault {
        match self {
            MuxerError::GoAwaySent(_) => Fault::Malformed,
            MuxerError::StreamFlood { .. } => Fault::RateExceeded,
        }
    }
}

/// Texts of yamux's frame decoding errors (its error types are not reachable through
/// libp2p): a frame over the size cap, an unknown version or frame type. yamux closes the
/// connection on these by itself.
const DECODE_ERRORS: [&str; 3] = [
    "frame body is too large",
    "unknown version",
    "unknown frame type",
];

/// Whether a connection closed for the peer's fault at the muxer, with the fault and the
/// reason: ended by [`Watch`], or on a frame yamux could not decode. yamux wraps the read
/// error (in its decode error, in an I/O error), so the cause's chain is walked; an
/// `io::Error`'s own `source()` skips the error it carries, hence `get_ref`.
pub fn peer_fault(e: &io::Error) -> Option<(Fault, String)> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    for _ in 0..8 {
        let err = cur?;
        if let Some(m) = err.downcast_ref::<MuxerError>() {
            return Some((m.fault(), m.to_string()));
        }
        let text = err.to_string();
        if DECODE_ERRORS.iter().any(|d| text.starts_with(d)) {
            return Some((Fault::Malformed, format!("yamux: {text}")));
        }
        cur = match err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// The socket under yamux, watched.
pub struct Watch<C> {
    io: C,
    written: Frames,
    read: Frames,
    /// The first GoAway with an error code yamux wrote; acted on once flushed.
    go_away: Option<u32>,
    streams: Bucket,
    opened: u64,
    /// Set once the connection is to end: reads fail from then on.
    ended: Option<MuxerError>,
}

fn watch<C>(io: C) -> Watch<C> {
    Watch {
        io,
        written: Frames::default(),
        read: Frames::default(),
        go_away: None,
        streams: Bucket::new(INBOUND_STREAMS, Instant::now()),
        opened: 0,
        ended: None,
    }
}

impl<C> Watch<C> {
    /// Counts the streams the peer opens in what was read.
    fn on_read(&mut self, buf: &[u8], now: Instant) {
        let (mut opened, mut over) = (0u64, false);
        let streams = &mut self.streams;
        self.read.feed(buf, |h| {
            if h.flags & FLAG_SYN != 0 && (h.kind == TYPE_DATA || h.kind == TYPE_WINDOW_UPDATE) {
                opened += 1;
                over |= streams.take(INBOUND_STREAMS, 1, now).is_err();
            }
        });
        self.opened += opened;
        if over && self.ended.is_none() {
            self.ended = Some(MuxerError::StreamFlood {
                per_second: INBOUND_STREAMS.per_second,
                burst: INBOUND_STREAMS.burst,
                opened: self.opened,
            });
        }
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Watch<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.ended {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)));
        }
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.on_read(&buf[..n.min(buf.len())], Instant::now());
        }
        r
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Watch<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            let go_away = &mut this.go_away;
            this.written.feed(&buf[..n.min(buf.len())], |h| {
                // Code 0 is a normal close, which ends the connection anyway.
                if h.kind == TYPE_GO_AWAY && h.length != 0 && go_away.is_none() {
                    *go_away = Some(h.length);
                }
            });
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_flush(cx);
        if r.is_ready()
            && this.ended.is_none()
            && let Some(code) = this.go_away
        {
            this.ended = Some(MuxerError::GoAwaySent(code));
        }
        r
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_close(cx)
    }
}

/// A muxer upgrade (yamux, or yamux under another name) over a watched socket.
#[derive(Clone, Default)]
pub struct Watched<U>(pub U);

impl<U: UpgradeInfo> UpgradeInfo for Watched<U> {
    type Info = U::Info;
    type InfoIter = U::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.protocol_info()
    }
}

impl<C, U> InboundConnectionUpgrade<C> for Watched<U>
where
    U: InboundConnectionUpgrade<Watch<C>>,
{
    type Output = U::Output;
    type Error = U::Error;
    type Future = U::Future;

    fn upgrade_inbound(self, io: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_inbound(watch(io), info)
    }
}

impl<C, U> OutboundConnectionUpgrade<C> for Watched<U>
where
    U: OutboundConnectionUpgrade<Watch<C>>,
{
    type Output = U::Output;
    type Error = U::Error;
    type Future = U::Future;

    fn upgrade_outbound(self, io: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_outbound(watch(io), info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn header(kind: u8, flags: u16, stream: u32, length: u32) -> Vec<u8> {
        let mut h = vec![0, kind];
        h.extend(flags.to_be_bytes());
        h.extend(stream.to_be_bytes());
        h.extend(length.to_be_bytes());
        h
    }

    fn go_aways(bytes: &[u8], chunk: usize) -> Vec<u32> {
        let mut f = Frames::default();
        let mut seen = Vec::new();
        for c in bytes.chunks(chunk) {
            f.feed(c, |h| {
                if h.kind == TYPE_GO_AWAY {
                    seen.push(h.length)
                }
            });
        }
        seen
    }

    #[test]
    fn headers_are_found_across_writes_and_never_inside_data_bodies() {
        let mut bytes = header(TYPE_DATA, 1, 1, 5);
        // A body that looks like a GoAway header must not be taken for one.
        bytes.extend(&header(TYPE_GO_AWAY, 0, 0, 1)[..5]);
        bytes.extend(header(TYPE_WINDOW_UPDATE, 0, 1, 1000)); // no body
        bytes.extend(header(2, 1, 0, 7)); // ping: no body
        bytes.extend(header(TYPE_GO_AWAY, 0, 0, 2));
        for chunk in [1, 5, 12, 13, 1000] {
            assert_eq!(go_aways(&bytes, chunk), vec![2], "chunks of {chunk}");
        }
    }

    fn watched() -> Watch<futures::io::Cursor<Vec<u8>>> {
        watch(futures::io::Cursor::new(Vec::new()))
    }

    #[test]
    fn streams_opened_beyond_the_quota_end_the_connection() {
        let t0 = Instant::now();
        let syns = |from: u32, n: u32| -> Vec<u8> {
            (0..n)
                .flat_map(|i| header(TYPE_WINDOW_UPDATE, FLAG_SYN, from + 2 * i, 0))
                .collect()
        };
        let mut w = watched();
        // The burst, then what a second refills, pass.
        w.on_read(&syns(1, 512), t0);
        assert_eq!(w.ended, None);
        w.on_read(&syns(1025, 128), t0 + Duration::from_secs(1));
        assert_eq!(w.ended, None);
        // Frames that open no stream do not count.
        let other: Vec<u8> = (0..1000)
            .flat_map(|_| header(TYPE_WINDOW_UPDATE, 0, 1, 10))
            .collect();
        w.on_read(&other, t0 + Duration::from_secs(1));
        assert_eq!(w.ended, None);
        // One more within that second does not.
        w.on_read(&syns(2000, 2), t0 + Duration::from_secs(1));
        assert!(matches!(
            w.ended,
            Some(MuxerError::StreamFlood { opened: 642, .. })
        ));
    }

    /// As yamux reports it: its connection error, with its decode error as the source,
    /// whose source is the read's I/O error.
    #[derive(Debug, thiserror::Error)]
    #[error("decode error")]
    struct Wrapped(#[source] io::Error);

    #[test]
    fn the_peers_fault_is_found_in_the_cause_as_yamux_wraps_it() {
        let aborted = |e: MuxerError| io::Error::new(io::ErrorKind::ConnectionAborted, e);
        let (f, why) = peer_fault(&aborted(MuxerError::GoAwaySent(1))).unwrap();
        assert_eq!(f, Fault::Malformed);
        assert!(why.contains("GoAway (error code 1)"));
        let flood = MuxerError::StreamFlood {
            per_second: 128.0,
            burst: 512,
            opened: 700,
        };
        let wrapped = io::Error::other(Wrapped(aborted(flood)));
        assert_eq!(peer_fault(&wrapped).unwrap().0, Fault::RateExceeded);
        let too_large = io::Error::other(Wrapped(io::Error::other(
            "frame body is too large (4294967295)",
        )));
        assert_eq!(
            peer_fault(&too_large),
            Some((
                Fault::Malformed,
                "yamux: frame body is too large (4294967295)".into()
            ))
        );
        assert_eq!(peer_fault(&io::Error::other("reset")), None);
        let other = io::Error::other(Wrapped(io::Error::other("connection reset")));
        assert_eq!(peer_fault(&other), None);
    }
}
