//! Unsigned-varint length-prefixed framing (the libp2p convention), in two forms: a
//! sans-I/O decoder over a byte buffer and async read/write over futures' `AsyncRead` /
//! `AsyncWrite` (what libp2p streams implement).
//!
//! Every decoder reads the length prefix, compares it with the caller's maximum, and only
//! then allocates or waits for the body: a peer announcing a 4 GiB frame costs us ten
//! bytes of reading, not 4 GiB of memory.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A 9-byte varint carries 63 bits, more than any frame we accept; longer prefixes are
/// garbage (this is the unsigned-varint spec's limit too).
pub const MAX_VARINT_LEN: usize = 9;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
    #[error("length prefix is not a valid unsigned varint")]
    BadLength,
    #[error("input ended inside a frame: {got} of {expected} bytes")]
    Truncated { expected: usize, got: usize },
    #[error("input ended inside the length prefix")]
    TruncatedLength,
    #[error("{0} bytes after the end of the frame")]
    TrailingBytes(usize),
    #[error("stream closed before a frame started")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads a varint from the front of `buf`: `Ok(None)` if `buf` ends before it does.
fn parse_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(MAX_VARINT_LEN) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // A trailing zero byte means a non-minimal encoding; refuse it so that each
            // frame has exactly one encoding.
            if b == 0 && i > 0 {
                return Err(FrameError::BadLength);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        Err(FrameError::BadLength)
    } else {
        Ok(None)
    }
}

fn write_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn check_len(len: u64, max: usize) -> Result<usize, FrameError> {
    match usize::try_from(len) {
        Ok(l) if l <= max => Ok(l),
        _ => Err(FrameError::TooLarge { len, max }),
    }
}

/// Sans-I/O: takes one frame from the front of `buf`. Returns the payload and the number
/// of bytes consumed, or `Ok(None)` when more input is needed. A length above `max` is an
/// error as soon as the prefix is complete, before any of the body has arrived.
pub fn decode_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some((len, n)) = parse_varint(buf)? else {
        return Ok(None);
    };
    let len = check_len(len, max)?;
    match buf.get(n..n + len) {
        Some(payload) => Ok(Some((payload, n + len))),
        None => Ok(None),
    }
}

/// Decodes a buffer that must hold exactly one frame.
pub fn decode_exact(buf: &[u8], max: usize) -> Result<&[u8], FrameError> {
    match decode_frame(buf, max)? {
        Some((payload, used)) if used == buf.len() => Ok(payload),
        Some((_, used)) => Err(FrameError::TrailingBytes(buf.len() - used)),
        None => match parse_varint(buf)? {
            None => Err(FrameError::TruncatedLength),
            Some((len, n)) => Err(FrameError::Truncated {
                expected: len as usize,
                got: buf.len() - n,
            }),
        },
    }
}

/// Frames `payload`. Refuses to produce a frame the receiver would refuse.
pub fn encode_frame(payload: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    check_len(payload.len() as u64, max)?;
    let mut out = Vec::with_capacity(payload.len() + MAX_VARINT_LEN);
    write_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Reads one frame from a stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; MAX_VARINT_LEN];
    let mut n = 0;
    let len = loop {
        let mut byte = [0u8; 1];
        if r.read(&mut byte).await? == 0 {
            return Err(if n == 0 {
                FrameError::Closed
            } else {
                FrameError::TruncatedLength
            });
        }
        prefix[n] = byte[0];
        n += 1;
        if let Some((len, _)) = parse_varint(&prefix[..n])? {
            break len;
        }
    };
    let len = check_len(len, max)?;
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let k = r.read(&mut body[got..]).await?;
        if k == 0 {
            return Err(FrameError::Truncated { expected: len, got });
        }
        got += k;
    }
    Ok(body)
}

/// Writes one frame to a stream (without closing it).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    max: usize,
) -> Result<(), FrameError> {
    let frame = encode_frame(payload, max)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    #[test]
    fn round_trip_sizes() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let f = encode_frame(&payload, 1 << 20).unwrap();
            assert_eq!(decode_exact(&f, 1 << 20).unwrap(), &payload[..]);
            let mut r = futures::io::Cursor::new(f);
            assert_eq!(block_on(read_frame(&mut r, 1 << 20)).unwrap(), payload);
        }
    }

    #[test]
    fn oversized_frame_refused_from_prefix_alone() {
        let mut prefix = Vec::new();
        write_varint(4 << 30, &mut prefix);
        // Only the prefix is present: the decoder must not ask for the body.
        match decode_frame(&prefix, 1024) {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!((len, max), (4 << 30, 1024));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(
            encode_frame(&[0; 2000], 1024),
            Err(FrameError::TooLarge { .. })
        ));
    }

    /// A stream that announces a huge frame and then would serve bytes forever, counting
    /// how much the decoder reads. If the decoder allocated/read the body it would read
    /// far more than the prefix.
    struct Hostile {
        prefix: Vec<u8>,
        served: usize,
    }
    impl AsyncRead for Hostile {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            let i = self.served;
            let n = buf.len();
            for (k, b) in buf.iter_mut().enumerate() {
                *b = self.prefix.get(i + k).copied().unwrap_or(0xAA);
            }
            self.served += n;
            Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn async_reader_stops_at_prefix_of_oversized_frame() {
        let mut prefix = Vec::new();
        write_varint(u32::MAX as u64, &mut prefix);
        let plen = prefix.len();
        let mut r = Hostile { prefix, served: 0 };
        let e = block_on(read_frame(&mut r, 8 * 1024 * 1024)).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge { .. }), "{e}");
        assert_eq!(r.served, plen, "read past the length prefix");
    }

    #[test]
    fn truncated_and_garbage_inputs_are_errors() {
        let f = encode_frame(b"hello world", 64).unwrap();
        // Body cut short.
        match decode_exact(&f[..5], 64) {
            Err(FrameError::Truncated {
                expected: 11,
                got: 4,
            }) => {}
            other => panic!("{other:?}"),
        }
        let mut r = futures::io::Cursor::new(f[..5].to_vec());
        assert!(matches!(
            block_on(read_frame(&mut r, 64)),
            Err(FrameError::Truncated {
                expected: 11,
                got: 4
            })
        ));
        // Prefix cut short.
        assert!(matches!(
            decode_exact(&[0x80], 64),
            Err(FrameError::TruncatedLength)
        ));
        let mut r = futures::io::Cursor::new(vec![0x80u8]);
        assert!(matches!(
            block_on(read_frame(&mut r, 64)),
            Err(FrameError::TruncatedLength)
        ));
        // Never-ending varint.
        assert!(matches!(
            decode_frame(&[0xff; 12], 64),
            Err(FrameError::BadLength)
        ));
        let mut r = futures::io::Cursor::new(vec![0xffu8; 12]);
        assert!(matches!(
            block_on(read_frame(&mut r, 64)),
            Err(FrameError::BadLength)
        ));
        // Non-minimal varint.
        assert!(matches!(
            decode_frame(&[0x85, 0x00], 64),
            Err(FrameError::BadLength)
        ));
        // Trailing bytes.
        let mut g = f.clone();
        g.push(1);
        assert!(matches!(
            decode_exact(&g, 64),
            Err(FrameError::TrailingBytes(1))
        ));
        // Empty stream.
        let mut r = futures::io::Cursor::new(Vec::<u8>::new());
        assert!(matches!(
            block_on(read_frame(&mut r, 64)),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn incremental_decoding_waits_for_more() {
        let f = encode_frame(&[9u8; 300], 1024).unwrap();
        for cut in 0..f.len() {
            assert!(
                decode_frame(&f[..cut], 1024).unwrap().is_none(),
                "cut {cut}"
            );
        }
        let (p, used) = decode_frame(&f, 1024).unwrap().unwrap();
        assert_eq!((p.len(), used), (300, f.len()));
    }

    #[test]
    fn write_then_read_over_a_stream() {
        let mut buf = futures::io::Cursor::new(Vec::new());
        block_on(write_frame(&mut buf, b"abc", 16)).unwrap();
        block_on(write_frame(&mut buf, b"", 16)).unwrap();
        buf.set_position(0);
        assert_eq!(block_on(read_frame(&mut buf, 16)).unwrap(), b"abc");
        assert_eq!(block_on(read_frame(&mut buf, 16)).unwrap(), b"");
        assert!(matches!(
            block_on(read_frame(&mut buf, 16)),
            Err(FrameError::Closed)
        ));
    }
}
