//! ed25519 keys: generation, signing, verification, and the key file format.
//!
//! A key file holds the 32-byte secret seed as 64 hex characters and a newline, and is
//! created with mode 0600.

use std::fs;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::{Signer, SigningKey};

use crate::types::{PublicKey, Signature};

/// An ed25519 signing key.
#[derive(Clone)]
pub struct Keypair(SigningKey);

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} must hold 64 hex characters (a 32-byte ed25519 seed)")]
    Format { path: String },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl Keypair {
    pub fn generate() -> Keypair {
        Keypair(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    pub fn from_seed(seed: [u8; 32]) -> Keypair {
        Keypair(SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature(self.0.sign(msg).to_bytes())
    }

    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn load(path: &Path) -> Result<Keypair, KeyFileError> {
        let p = path.display().to_string();
        let text = fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: p.clone(),
            source,
        })?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed)
            .map_err(|_| KeyFileError::Format { path: p })?;
        Ok(Keypair::from_seed(seed))
    }

    /// Writes a new key file; refuses to overwrite an existing one, since that would
    /// destroy a key that may hold funds or be a network's authority.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyFileError> {
        let err = |source| KeyFileError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(err)?;
        }
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(err)?;
        writeln!(f, "{}", hex::encode(self.seed())).map_err(err)?;
        f.sync_all().map_err(err)
    }
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(f, "Keypair({})", self.public())
    }
}

/// Verifies `sig` by `key` over `msg`, by ZIP-215's rules (the cofactored equation; any
/// encoding of a point that decodes). A key that is not a curve point fails.
///
/// One rule for every path: a signature that passes here passes [`verify_batch`] in any
/// batch, and one that fails here fails every batch it is in. Without that, a peer can
/// craft a transaction (a signature with a small-order component) that some nodes
/// accept in one batch and others refuse alone or in another batch, and a block that
/// holds it splits the network.
///
/// A key of small order signs nothing: by the cofactored equation, anyone can make a
/// signature under such a key (R = sB for any s), so whatever was sent to one (the
/// all-zero key, the identity: easy to take for a burn address) would be anyone's.
pub fn verify(key: &PublicKey, msg: &[u8], sig: &Signature) -> bool {
    if !may_sign(key) {
        return false;
    }
    let Ok(vk) = ed25519_zebra::VerificationKey::try_from(key.0) else {
        return false;
    };
    vk.verify(&ed25519_zebra::Signature::from_bytes(&sig.0), msg)
        .is_ok()
}

/// Verifies many signatures at once (batch verification, with the terms of one key's
/// signatures merged: a batch from few senders costs about half of one from as many
/// senders as signatures). `false` if any is invalid, without saying which: callers that
/// need the culprit verify one by one after a failure, with [`verify`], which judges
/// every signature as a batch does.
pub fn verify_batch(items: &[(&PublicKey, &[u8], &Signature)]) -> bool {
    // Alone, the same rule costs less (a gossiped transaction is often checked alone).
    if let [(k, m, s)] = items {
        return verify(k, m, s);
    }
    let mut keys = std::collections::HashSet::new();
    let mut batch = ed25519_zebra::batch::Verifier::new();
    for (k, m, s) in items {
        if keys.insert(k.0) && !may_sign(k) {
            return false;
        }
        batch.queue((
            ed25519_zebra::VerificationKeyBytes::from(k.0),
            ed25519_zebra::Signature::from_bytes(&s.0),
            *m,
        ));
    }
    batch.verify(rand::thread_rng()).is_ok()
}

/// A curve point whose order is not small: the keys that can sign.
fn may_sign(key: &PublicKey) -> bool {
    curve25519_dalek::edwards::CompressedEdwardsY(key.0)
        .decompress()
        .is_some_and(|p| !p.is_small_order())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_and_no_overwrite() {
        let dir = std::env::temp_dir().join(format!("cm-key-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("k.key");
        let k = Keypair::generate();
        k.save_new(&path).unwrap();
        assert_eq!(Keypair::load(&path).unwrap().public(), k.public());
        assert!(Keypair::generate().save_new(&path).is_err());
        fs::write(&path, "nothex").unwrap();
        let e = Keypair::load(&path).unwrap_err().to_string();
        assert!(e.contains("64 hex characters"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn invalid_public_key_fails_verification() {
        let k = Keypair::generate();
        let sig = k.sign(b"m");
        assert!(verify(&k.public(), b"m", &sig));
        assert!(!verify(&k.public(), b"n", &sig));
        // Not a point on the curve.
        let bogus = PublicKey([0xff; 32]);
        assert!(!verify(&bogus, b"m", &sig));
    }

    fn batch_of(items: &[(PublicKey, Vec<u8>, Signature)]) -> bool {
        let refs: Vec<(&PublicKey, &[u8], &Signature)> =
            items.iter().map(|(k, m, s)| (k, m.as_slice(), s)).collect();
        verify_batch(&refs)
    }

    #[test]
    fn a_batch_passes_exactly_when_each_signature_does() {
        let keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate()).collect();
        let mut items: Vec<(PublicKey, Vec<u8>, Signature)> = (0..64u32)
            .map(|i| {
                let k = &keys[i as usize % keys.len()];
                let m = i.to_be_bytes().to_vec();
                (k.public(), m.clone(), k.sign(&m))
            })
            .collect();
        assert!(batch_of(&items));
        assert!(batch_of(&[]));
        // One wrong message, then one wrong key, anywhere in the batch: it fails.
        items[17].1 = b"other".to_vec();
        assert!(!verify(&items[17].0, &items[17].1, &items[17].2));
        assert!(!batch_of(&items));
        items[17].1 = 17u32.to_be_bytes().to_vec();
        items[40].0 = keys[(40 + 1) % keys.len()].public();
        assert!(!batch_of(&items));
        items[40].0 = keys[40 % keys.len()].public();
        assert!(batch_of(&items));
        // A key that is not a point fails the batch.
        items[3].0 = PublicKey([0xff; 32]);
        assert!(!batch_of(&items));
    }

    /// A signature whose R carries a point of order 8: no honest signer makes one, a
    /// hostile peer can. ed25519-dalek's single verification refused it while its batch
    /// equation let it through one time in eight, decided by the batch's other
    /// signatures; here it is judged the same way alone and in every batch.
    #[test]
    fn a_signature_with_a_small_order_component_is_judged_alike_alone_and_in_any_batch() {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT as B, EIGHT_TORSION};
        use curve25519_dalek::scalar::Scalar;
        use sha2::{Digest, Sha512};
        let wide = |seed: u8| Scalar::from_bytes_mod_order_wide(&[seed; 64]);
        let (a, r) = (wide(7), wide(9));
        let pk = (B * a).compress();
        let msg = b"a transfer".to_vec();
        let big_r = (B * r + EIGHT_TORSION[1]).compress();
        let k = Scalar::from_hash(
            Sha512::new()
                .chain_update(big_r.as_bytes())
                .chain_update(pk.as_bytes())
                .chain_update(&msg),
        );
        let s = r + k * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(big_r.as_bytes());
        sig[32..].copy_from_slice(s.as_bytes());
        let crafted = (PublicKey(pk.to_bytes()), msg, Signature(sig));
        let alone = verify(&crafted.0, &crafted.1, &crafted.2);
        let honest = Keypair::generate();
        for n in 0..32u32 {
            // Batches that differ in their other signatures (and coefficients).
            let mut items: Vec<_> = (0..n)
                .map(|i| {
                    let m = i.to_be_bytes().to_vec();
                    (honest.public(), m.clone(), honest.sign(&m))
                })
                .collect();
            items.push(crafted.clone());
            assert_eq!(batch_of(&items), alone, "batch of {}", n + 1);
        }
        // By ZIP-215's cofactored equation, it is valid: what matters is that every
        // node agrees.
        assert!(alone);
    }

    /// Under a small-order key, s = anything and R = sB satisfy the cofactored equation
    /// for every message: such "signatures" are refused alone and in batches.
    #[test]
    fn nothing_is_signed_by_a_key_of_small_order() {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT as B, EIGHT_TORSION};
        use curve25519_dalek::scalar::Scalar;
        let s = Scalar::from_bytes_mod_order_wide(&[3; 64]);
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice((B * s).compress().as_bytes());
        sig[32..].copy_from_slice(s.as_bytes());
        let forged = Signature(sig);
        let honest = Keypair::generate();
        let fine = (honest.public(), b"ok".to_vec(), honest.sign(b"ok"));
        let mut keys: Vec<[u8; 32]> = EIGHT_TORSION
            .iter()
            .map(|p| p.compress().to_bytes())
            .collect();
        keys.push([0; 32]);
        for k in keys {
            let key = PublicKey(k);
            // The cofactored equation alone would take it (what ed25519-zebra checks).
            let zebra = ed25519_zebra::VerificationKey::try_from(k).map(|vk| {
                vk.verify(&ed25519_zebra::Signature::from_bytes(&sig), b"any")
                    .is_ok()
            });
            assert_eq!(zebra, Ok(true), "{}", hex::encode(k));
            assert!(!verify(&key, b"any", &forged));
            assert!(!batch_of(&[fine.clone(), (key, b"any".to_vec(), forged)]));
        }
        assert!(batch_of(&[fine.clone(), fine]));
    }
}
