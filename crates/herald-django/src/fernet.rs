//! Fernet tokens (version 0x80) and the key derivation channels_redis applies to
//! `symmetric_encryption_keys`, built on the RustCrypto primitives.
//!
//! Token layout: `0x80 | u64 BE timestamp | 16-byte IV | AES-128-CBC(PKCS7(data)) | HMAC-SHA256`,
//! the whole thing base64url-encoded with `=` padding. The HMAC covers everything before it.

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;
type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;
type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;

const VERSION: u8 = 0x80;
const HEADER_LEN: usize = 1 + 8 + 16;
const TAG_LEN: usize = 32;
/// Python's `cryptography` refuses tokens stamped this far in the future (when a TTL is
/// checked at all), so a peer with a fast clock cannot make messages live longer.
const MAX_CLOCK_SKEW_SECS: u64 = 60;

/// Encodes with `=` padding like Python's `base64.urlsafe_b64encode`, and decodes with or
/// without it so a peer that strips padding is still understood.
const TOKEN_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a token was refused. The variants stay coarse on purpose: telling an attacker which
/// check failed helps nobody, but the counters and logs want a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FernetError {
    /// Not base64url, too short, or not version 0x80.
    #[error("malformed fernet token")]
    Malformed,
    /// No configured key produced a matching HMAC.
    #[error("fernet token signature does not match any key")]
    BadSignature,
    /// The token is older than the TTL, or too far in the future.
    #[error("fernet token expired or from the future")]
    Expired,
    /// The signature matched but the ciphertext did not decrypt (bad padding).
    #[error("fernet token does not decrypt")]
    BadCiphertext,
}

/// One Fernet key: 16 bytes of HMAC key, then 16 bytes of AES key.
#[derive(Clone)]
pub(crate) struct FernetKey {
    signing: [u8; 16],
    encryption: [u8; 16],
}

impl std::fmt::Debug for FernetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material never goes into logs.
        f.write_str("FernetKey(..)")
    }
}

impl FernetKey {
    /// Derives the key channels_redis builds from a configured secret: the 32 raw bytes
    /// of `sha256(secret)` (which it base64-encodes only to satisfy Fernet's constructor).
    pub(crate) fn from_secret(secret: &str) -> Self {
        let digest = Sha256::digest(secret.as_bytes());
        let mut signing = [0u8; 16];
        let mut encryption = [0u8; 16];
        signing.copy_from_slice(&digest[..16]);
        encryption.copy_from_slice(&digest[16..]);
        Self {
            signing,
            encryption,
        }
    }

    /// The key in Fernet's textual form (base64url of the 32 bytes), as Python prints it.
    #[cfg(test)]
    pub(crate) fn to_base64(&self) -> String {
        let mut raw = [0u8; 32];
        raw[..16].copy_from_slice(&self.signing);
        raw[16..].copy_from_slice(&self.encryption);
        TOKEN_B64.encode(raw)
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail for a 16-byte key.
        match HmacSha256::new_from_slice(&self.signing) {
            Ok(mac) => mac,
            Err(_) => unreachable!("hmac takes keys of any length"),
        }
    }

    /// Builds a token for `data` stamped `now` (Unix seconds) with the given IV.
    pub(crate) fn encrypt_with(&self, data: &[u8], now: u64, iv: [u8; 16]) -> Vec<u8> {
        let ciphertext = Aes128CbcEnc::new(&self.encryption.into(), &iv.into())
            .encrypt_padded_vec_mut::<Pkcs7>(data);
        let mut token = Vec::with_capacity(HEADER_LEN + ciphertext.len() + TAG_LEN);
        token.push(VERSION);
        token.extend_from_slice(&now.to_be_bytes());
        token.extend_from_slice(&iv);
        token.extend_from_slice(&ciphertext);
        let mut mac = self.mac();
        mac.update(&token);
        token.extend_from_slice(&mac.finalize().into_bytes());
        TOKEN_B64.encode(token).into_bytes()
    }

    /// Checks the signature of an already base64-decoded token and decrypts it.
    fn decrypt_raw(&self, raw: &[u8]) -> Result<Vec<u8>, FernetError> {
        let (signed, tag) = raw.split_at(raw.len() - TAG_LEN);
        let mut mac = self.mac();
        mac.update(signed);
        // verify_slice compares in constant time.
        mac.verify_slice(tag)
            .map_err(|_| FernetError::BadSignature)?;
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&signed[9..HEADER_LEN]);
        Aes128CbcDec::new(&self.encryption.into(), &iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(&signed[HEADER_LEN..])
            .map_err(|_| FernetError::BadCiphertext)
    }
}

/// The OS random generator failed, so no IV could be drawn and nothing was encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the OS random generator failed; message not encrypted")]
pub struct NoRandomness;

/// Several keys: encrypt with the first, decrypt with whichever matches (key rotation,
/// the way Python's `MultiFernet` behaves).
#[derive(Clone, Debug)]
pub(crate) struct MultiFernet {
    keys: Vec<FernetKey>,
}

impl MultiFernet {
    /// `None` when `secrets` is empty: encryption is off.
    pub(crate) fn from_secrets(secrets: &[String]) -> Option<Self> {
        if secrets.is_empty() {
            return None;
        }
        Some(Self {
            keys: secrets.iter().map(|s| FernetKey::from_secret(s)).collect(),
        })
    }

    /// A fresh token for `data`, with a random IV from the OS generator. Fails closed: if
    /// the OS cannot give randomness, no token is made (a CBC IV must be unpredictable).
    pub(crate) fn encrypt(&self, data: &[u8], now: u64) -> Result<Vec<u8>, NoRandomness> {
        self.encrypt_filling(data, now, |iv| {
            getrandom::fill(iv).map_err(|_| NoRandomness)
        })
    }

    /// [`MultiFernet::encrypt`] with the IV source given (tests make it fail).
    fn encrypt_filling(
        &self,
        data: &[u8],
        now: u64,
        fill: impl FnOnce(&mut [u8]) -> Result<(), NoRandomness>,
    ) -> Result<Vec<u8>, NoRandomness> {
        let mut iv = [0u8; 16];
        fill(&mut iv)?;
        // `keys` is never empty: `from_secrets` returns None for an empty list.
        Ok(self.keys[0].encrypt_with(data, now, iv))
    }

    /// Decodes and decrypts `token`. With `ttl = Some(secs)` the token must be at most that
    /// old and at most 60 s in the future (what channels_redis' core layer asks for);
    /// `None` skips the time check (its pubsub layer).
    pub(crate) fn decrypt(
        &self,
        token: &[u8],
        ttl: Option<u64>,
        now: u64,
    ) -> Result<Vec<u8>, FernetError> {
        let raw = TOKEN_B64
            .decode(token)
            .map_err(|_| FernetError::Malformed)?;
        // The smallest valid token has one ciphertext block.
        if raw.len() < HEADER_LEN + 16 + TAG_LEN || raw[0] != VERSION {
            return Err(FernetError::Malformed);
        }
        if (raw.len() - HEADER_LEN - TAG_LEN) % 16 != 0 {
            return Err(FernetError::Malformed);
        }
        let mut last = FernetError::BadSignature;
        for key in &self.keys {
            match key.decrypt_raw(&raw) {
                Ok(data) => {
                    // Time is checked after the signature, so a forged timestamp is never
                    // reported as "expired".
                    if let Some(ttl) = ttl {
                        let mut stamp = [0u8; 8];
                        stamp.copy_from_slice(&raw[1..9]);
                        let stamp = u64::from_be_bytes(stamp);
                        if stamp.saturating_add(ttl) < now
                            || now.saturating_add(MAX_CLOCK_SKEW_SECS) < stamp
                        {
                            return Err(FernetError::Expired);
                        }
                    }
                    return Ok(data);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_the_documented_key() {
        // CHANNELS_REDIS.md §4: the key channels_redis derives for "s3cret".
        assert_eq!(
            FernetKey::from_secret("s3cret").to_base64(),
            "HsHCa1DV08WNlYMYGvgHZlX-AHVr9yhZQLo2cPmfy6A="
        );
    }

    #[test]
    fn round_trips_and_rotates() {
        let old = MultiFernet::from_secrets(&["old".to_owned()]).unwrap();
        let both = MultiFernet::from_secrets(&["new".to_owned(), "old".to_owned()]).unwrap();
        let token = old.encrypt(b"hello", 1000).unwrap();
        assert!(token.starts_with(b"gAAAAA"));
        assert_eq!(both.decrypt(&token, Some(70), 1010).unwrap(), b"hello");
        let token = both.encrypt(b"", 1000).unwrap();
        assert_eq!(both.decrypt(&token, None, 1000).unwrap(), b"");
        assert_eq!(
            old.decrypt(&token, None, 1000),
            Err(FernetError::BadSignature)
        );
    }

    #[test]
    fn checks_time_only_with_a_ttl() {
        let f = MultiFernet::from_secrets(&["k".to_owned()]).unwrap();
        let token = f.encrypt(b"x", 1000).unwrap();
        assert_eq!(f.decrypt(&token, Some(70), 1071), Err(FernetError::Expired));
        assert_eq!(f.decrypt(&token, Some(70), 1070).unwrap(), b"x");
        assert_eq!(f.decrypt(&token, Some(70), 939), Err(FernetError::Expired));
        assert_eq!(f.decrypt(&token, None, 99_999).unwrap(), b"x");
    }

    #[test]
    fn rejects_tampering() {
        let f = MultiFernet::from_secrets(&["k".to_owned()]).unwrap();
        let token = f.encrypt(b"payload", 1000).unwrap();
        let mut raw = TOKEN_B64.decode(&token).unwrap();
        raw[HEADER_LEN] ^= 1;
        let forged = TOKEN_B64.encode(&raw).into_bytes();
        assert_eq!(
            f.decrypt(&forged, None, 1000),
            Err(FernetError::BadSignature)
        );
        assert_eq!(
            f.decrypt(b"not base64!", None, 1000),
            Err(FernetError::Malformed)
        );
        assert_eq!(f.decrypt(b"gAAA", None, 1000), Err(FernetError::Malformed));
    }

    #[test]
    fn fails_closed_without_os_randomness() {
        let f = MultiFernet::from_secrets(&["k".to_owned()]).unwrap();
        assert_eq!(
            f.encrypt_filling(b"secret", 1000, |_| Err(NoRandomness)),
            Err(NoRandomness)
        );
        // Two tokens for the same data differ: the IV comes from the OS each time.
        assert_ne!(
            f.encrypt(b"same", 1).unwrap(),
            f.encrypt(b"same", 1).unwrap()
        );
    }
}
