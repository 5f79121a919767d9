//! Gossip the Mina way. Topics `mina/block/1.0.0`, `mina/tx/1.0.0` and
//! `mina/snark-work/1.0.0` carry opaque payloads: an 8-byte little-endian length and a
//! Bin_prot body we do not decode. We check the frame and count what arrives; since we
//! cannot validate a Mina block, transaction or snark work, it is marked Ignore and never
//! forwarded. The message id is BLAKE2b-256 of the data keyed with the topic (keyed with
//! BLAKE2b-256 of the topic when it is longer than BLAKE2b's 64-byte key limit).

use blake2::digest::consts::U32;
use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2b, Blake2bMac, Digest};
use libp2p::gossipsub::{IdentTopic, MessageId, TopicHash};

pub const TOPICS: [&str; 3] = ["mina/block/1.0.0", "mina/tx/1.0.0", "mina/snark-work/1.0.0"];
/// Largest gossip message Mina's nodes accept.
pub const MAX_TRANSMIT: usize = 32 * 1024 * 1024;
const LEN_PREFIX: usize = 8;

pub fn topics() -> impl Iterator<Item = IdentTopic> {
    TOPICS.iter().map(|t| IdentTopic::new(*t))
}

pub fn is_mina_topic(t: &TopicHash) -> bool {
    TOPICS.iter().any(|n| t.as_str() == *n)
}

pub fn message_id(topic: &str, data: &[u8]) -> MessageId {
    let key: Vec<u8> = if topic.len() > 64 {
        Blake2b::<U32>::digest(topic.as_bytes()).to_vec()
    } else {
        topic.as_bytes().to_vec()
    };
    // Keys of 0..=64 bytes are what keyed BLAKE2b takes; both branches stay within it.
    match <Blake2bMac<U32> as KeyInit>::new_from_slice(&key) {
        Ok(mut m) => {
            m.update(data);
            MessageId::from(m.finalize().into_bytes().to_vec())
        }
        Err(_) => MessageId::from(Blake2b::<U32>::digest(data).to_vec()),
    }
}

/// Checks the frame: the little-endian length matches what follows it.
pub fn check_frame(data: &[u8]) -> Result<usize, String> {
    let Some((len, body)) = data.split_first_chunk::<LEN_PREFIX>() else {
        return Err(format!(
            "{} bytes: shorter than the length prefix",
            data.len()
        ));
    };
    let len = u64::from_le_bytes(*len);
    if len != body.len() as u64 {
        return Err(format!(
            "length prefix says {len} bytes, {} follow",
            body.len()
        ));
    }
    Ok(body.len())
}

/// Frames a body for publishing.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(LEN_PREFIX + body.len());
    v.extend_from_slice(&(body.len() as u64).to_le_bytes());
    v.extend_from_slice(body);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_lies_are_caught() {
        let f = frame(b"hello");
        assert_eq!(check_frame(&f), Ok(5));
        assert!(check_frame(&f[..10]).is_err());
        assert!(check_frame(b"short").is_err());
        let mut lie = f.clone();
        lie[0] = 9;
        assert!(check_frame(&lie).is_err());
        assert_eq!(check_frame(&frame(b"")), Ok(0));
    }

    #[test]
    fn message_ids_are_keyed_by_topic() {
        let a = message_id("mina/tx/1.0.0", b"x");
        assert_eq!(a, message_id("mina/tx/1.0.0", b"x"));
        assert_ne!(a, message_id("mina/block/1.0.0", b"x"));
        assert_ne!(a, message_id("mina/tx/1.0.0", b"y"));
        assert_eq!(a.0.len(), 32);
        // A topic beyond the key limit is keyed by its hash, not refused.
        let long = "t".repeat(100);
        assert_eq!(message_id(&long, b"x").0.len(), 32);
        // The keyed hash is the standard one: the key block changes the result.
        assert_ne!(a.0, Blake2b::<U32>::digest(b"x").to_vec());
    }
}
