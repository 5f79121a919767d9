//! A request-response codec for protobuf messages in size-capped, varint length-prefixed
//! frames (one request and one response per stream). Used by every request-response
//! protocol of ours; each sets its own caps.
//!
//! A frame above its cap, a truncated frame or bytes that are not the expected message
//! never allocate beyond the cap. On the outbound side they fail the stream with
//! `InvalidData`, which request-response reports as an outbound failure. On the inbound
//! side request-response would drop such a failure silently (it only reports failures of
//! requests it has handed out), so an inbound request decodes to [`Inbound`]: the message,
//! or [`Malformed`] with the reason, which reaches the node as an event it can penalise.

use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chainmesh_proto::codec::{FrameError, read_frame, write_frame};
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use prost::Message;

/// Why an inbound request could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

/// An inbound request: the message, or why the bytes were not one.
pub type Inbound<T> = Result<T, Malformed>;

/// Bytes of one protocol's frames (length prefix included) read and written, shared by
/// every stream's codec: the node reports them per protocol, which the transport-level
/// counters cannot.
#[derive(Clone, Default, Debug)]
pub struct WireMeter(Arc<[AtomicU64; 2]>);

impl WireMeter {
    pub fn bytes_in(&self) -> u64 {
        self.0[0].load(Ordering::Relaxed)
    }
    pub fn bytes_out(&self) -> u64 {
        self.0[1].load(Ordering::Relaxed)
    }
    fn add_in(&self, n: usize) {
        self.0[0].fetch_add(n as u64, Ordering::Relaxed);
    }
    fn add_out(&self, n: usize) {
        self.0[1].fetch_add(n as u64, Ordering::Relaxed);
    }
}

pub struct ProtoCodec<Req, Resp> {
    max_request: usize,
    max_response: usize,
    meter: WireMeter,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> ProtoCodec<Req, Resp> {
    pub fn new(max_request: usize, max_response: usize, meter: WireMeter) -> Self {
        ProtoCodec {
            max_request,
            max_response,
            meter,
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for ProtoCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::new(self.max_request, self.max_response, self.meter.clone())
    }
}

/// A frame's size on the wire: the body and its varint length prefix.
fn framed(len: usize) -> usize {
    let mut prefix = 1;
    let mut rest = len >> 7;
    while rest > 0 {
        prefix += 1;
        rest >>= 7;
    }
    len + prefix
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// What the peer sent was bad (`InvalidData`, which the node scores), or nothing came at
/// all: a stream closed before its first byte, or a transport error, is no garbage of the
/// peer's. The peer may have given up on a request it could not answer in time, or the
/// connection failed under both of us (found healing a network partition: stalled
/// connections came back with their streams closed, and scoring those as malformed
/// frames got honest peers disconnected, then banned through gossipsub's graylist).
fn frame_error(e: FrameError) -> io::Error {
    match e {
        FrameError::Closed => io::Error::new(io::ErrorKind::UnexpectedEof, e.to_string()),
        FrameError::Io(e) => e,
        e => invalid(e),
    }
}

async fn read_msg<M: Message + Default, T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
    meter: &WireMeter,
) -> io::Result<M> {
    let frame = read_frame(io, max).await.map_err(frame_error)?;
    meter.add_in(framed(frame.len()));
    M::decode(frame.as_slice()).map_err(invalid)
}

async fn write_msg<M: Message, T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    msg: &M,
    max: usize,
    meter: &WireMeter,
) -> io::Result<()> {
    let body = msg.encode_to_vec();
    write_frame(io, &body, max).await.map_err(invalid)?;
    meter.add_out(framed(body.len()));
    io.close().await
}

impl<Req, Resp> libp2p::request_response::Codec for ProtoCodec<Req, Resp>
where
    Req: Message + Default + Send + 'static,
    Resp: Message + Default + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Inbound<Req>;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Inbound<Req>>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_msg(io, self.max_request, &self.meter).await {
            Ok(m) => Ok(Ok(m)),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(Err(Malformed(e.to_string()))),
            Err(e) => Err(e),
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_msg(io, self.max_response, &self.meter).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Inbound<Req>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Ok(m) => write_msg(io, &m, self.max_request, &self.meter).await,
            Err(Malformed(why)) => Err(invalid(format!(
                "refusing to send a malformed request: {why}"
            ))),
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_msg(io, &res, self.max_response, &self.meter).await
    }
}

/// `/chainmesh/<net>/<name>/<version>`: the network id in every protocol name keeps two
/// networks from ever speaking to each other by accident.
pub fn protocol_name(network_id: &str, name: &str, version: u32) -> StreamProtocol {
    match StreamProtocol::try_from_owned(format!("/chainmesh/{network_id}/{name}/{version}")) {
        Ok(p) => p,
        // Network ids are validated ([a-z0-9-]), so the name always starts with '/'.
        Err(_) => StreamProtocol::new("/chainmesh/invalid/0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainmesh_proto::pb_net::Status;
    use futures::executor::block_on;
    use libp2p::request_response::Codec;

    #[test]
    fn round_trip_and_caps() {
        let meter = WireMeter::default();
        let mut c = ProtoCodec::<Status, Status>::new(64, 64, meter.clone());
        let p = protocol_name("devnet", "status", 1);
        assert_eq!(p.as_ref(), "/chainmesh/devnet/status/1");
        let msg = Status {
            version: 1,
            network_id: "devnet".into(),
            ..Default::default()
        };
        let mut buf = futures::io::Cursor::new(Vec::new());
        block_on(c.write_request(&p, &mut buf, Ok(msg.clone()))).unwrap();
        buf.set_position(0);
        assert_eq!(block_on(c.read_request(&p, &mut buf)).unwrap(), Ok(msg));
        // Both directions counted the whole frame, prefix included.
        let wire = buf.get_ref().len() as u64;
        assert_eq!((meter.bytes_out(), meter.bytes_in()), (wire, wire));
        assert_eq!(framed(127), 128);
        assert_eq!(framed(128), 130);

        let big = Status {
            agent: "x".repeat(100),
            ..Default::default()
        };
        let mut buf = futures::io::Cursor::new(Vec::new());
        let e = block_on(c.write_response(&p, &mut buf, big)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);

        // Inbound garbage, oversized or truncated frames come back as `Malformed`.
        for bad in [
            vec![5u8, 0xff, 0xff, 0xff, 0xff, 0xff],
            vec![0x80, 0x80, 0x80, 0x01],
            vec![10, 1, 2],
            vec![0x80],
        ] {
            let mut r = futures::io::Cursor::new(bad.clone());
            let got = block_on(c.read_request(&p, &mut r)).unwrap();
            assert!(got.is_err(), "{bad:?} decoded as {got:?}");
        }
        // A stream closed before its first byte is no garbage: a stream error, unscored.
        let mut r = futures::io::Cursor::new(Vec::new());
        let e = block_on(c.read_request(&p, &mut r)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut r = futures::io::Cursor::new(Vec::new());
        let e = block_on(c.read_response(&p, &mut r)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
