//! `/mina/peer-exchange`: the side that accepts the stream writes a JSON list of peer
//! address infos (`[{"ID": "<peer id>", "Addrs": ["<multiaddr>", ...]}]`, as Go's libp2p
//! marshals `peer.AddrInfo`) and closes; the side that opened it sends nothing and reads
//! at most 8 KiB.

use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response::{self, ProtocolSupport};
use serde::{Deserialize, Serialize};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/mina/peer-exchange");
/// Most bytes read of an answer.
pub const MAX_ANSWER: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrInfo {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Addrs", default)]
    pub addrs: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Codec;

pub type Behaviour = request_response::Behaviour<Codec>;
pub type Event = request_response::Event<(), Vec<AddrInfo>>;

pub fn new(timeout: Duration) -> Behaviour {
    request_response::Behaviour::with_codec(
        Codec,
        [(PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(4),
    )
}

/// Encodes our answer within the cap, dropping peers from the end until it fits.
pub fn encode(mut peers: Vec<AddrInfo>) -> Vec<u8> {
    loop {
        let v = serde_json::to_vec(&peers).unwrap_or_else(|_| b"[]".to_vec());
        if v.len() <= MAX_ANSWER || peers.is_empty() {
            return v;
        }
        peers.pop();
    }
}

pub fn decode(bytes: &[u8]) -> io::Result<Vec<AddrInfo>> {
    if bytes.len() > MAX_ANSWER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "peer exchange answer over 8 KiB",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = ();
    type Response = Vec<AddrInfo>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<()>
    where
        T: AsyncRead + Unpin + Send,
    {
        // The opener sends nothing: the stream itself is the request.
        Ok(())
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<AddrInfo>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        io.take(MAX_ANSWER as u64 + 1).read_to_end(&mut buf).await?;
        decode(&buf)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, _: ()) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        peers: Vec<AddrInfo>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&encode(peers)).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_use_gos_field_names_and_stay_under_the_cap() {
        let p = AddrInfo {
            id: "12D3KooWx".into(),
            addrs: vec!["/ip4/10.0.0.1/tcp/8302".into()],
        };
        let json = String::from_utf8(encode(vec![p.clone()])).unwrap();
        assert_eq!(
            json,
            r#"[{"ID":"12D3KooWx","Addrs":["/ip4/10.0.0.1/tcp/8302"]}]"#
        );
        assert_eq!(decode(json.as_bytes()).unwrap(), vec![p.clone()]);
        let many = encode(vec![p; 1000]);
        assert!(many.len() <= MAX_ANSWER);
        assert!(decode(&many).unwrap().len() < 1000);
        assert!(decode(&vec![b' '; MAX_ANSWER + 1]).is_err());
        assert!(decode(b"{not json").is_err());
    }
}
