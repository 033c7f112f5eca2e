//! Access tokens: PASETO v4.local (encrypted and authenticated), short-lived, naming the
//! key that made them in the footer so that keys can be rotated: the newest key issues,
//! every key in the ring still verifies until it is removed.

use super::credentials::random_bytes;
use super::keyfile::{self, KeyFileError};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pasetors::keys::SymmetricKey;
use pasetors::token::UntrustedToken;
use pasetors::version4::{LocalToken, V4};
use pasetors::{Local, version4};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Binds tokens to their use: an access token cannot be replayed as anything else.
const IMPLICIT: &[u8] = b"plexus access token v1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The session (login) it belongs to: revoking the session ends the token.
    pub sid: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    key: String,
    created_at: u64,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
struct Footer {
    kid: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("the token is not a Plexus access token")]
    Malformed,
    #[error("the token was made with a key this server does not have")]
    UnknownKey,
    #[error("the token does not verify (forged or tampered with)")]
    Invalid,
    #[error("the token has expired; log in again or refresh it")]
    Expired,
}

pub struct Keyring {
    path: PathBuf,
    /// Oldest first; the last one issues.
    keys: Vec<(String, SymmetricKey<V4>)>,
}

impl Keyring {
    /// Loads the key file, creating it with a first key when there is none.
    pub fn load_or_create(path: &Path, now: u64) -> Result<Keyring, KeyFileError> {
        let invalid = |message: String| KeyFileError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let file = match keyfile::read(path)? {
            Some(text) => {
                serde_json::from_str::<KeyFile>(&text).map_err(|e| invalid(e.to_string()))?
            }
            None => {
                let file = KeyFile {
                    keys: vec![new_key(now)],
                };
                keyfile::write(path, &serde_json::to_string_pretty(&file).expect("JSON"))?;
                file
            }
        };
        if file.keys.is_empty() {
            return Err(invalid("it holds no key".into()));
        }
        let mut keys = Vec::new();
        for k in &file.keys {
            let bytes = STANDARD
                .decode(&k.key)
                .map_err(|e| invalid(format!("key {}: {e}", k.kid)))?;
            let key = SymmetricKey::<V4>::from(&bytes)
                .map_err(|_| invalid(format!("key {} is not 32 bytes", k.kid)))?;
            keys.push((k.kid.clone(), key));
        }
        Ok(Keyring {
            path: path.to_path_buf(),
            keys,
        })
    }

    /// Adds a new issuing key; tokens of the older keys still verify.
    pub fn rotate(path: &Path, now: u64) -> Result<String, KeyFileError> {
        let text = keyfile::read(path)?.ok_or_else(|| KeyFileError::Invalid {
            path: path.display().to_string(),
            message: "there is no key file to rotate yet".into(),
        })?;
        let mut file: KeyFile = serde_json::from_str(&text).map_err(|e| KeyFileError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let key = new_key(now);
        let kid = key.kid.clone();
        file.keys.push(key);
        keyfile::write(path, &serde_json::to_string_pretty(&file).expect("JSON"))?;
        Ok(kid)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn current_kid(&self) -> &str {
        &self.keys.last().expect("at least one key").0
    }

    pub fn issue(&self, claims: &Claims) -> String {
        let (kid, key) = self.keys.last().expect("at least one key");
        let footer = serde_json::to_vec(&Footer { kid: kid.clone() }).expect("JSON");
        let payload = serde_json::to_vec(claims).expect("JSON");
        LocalToken::encrypt(key, &payload, Some(&footer), Some(IMPLICIT))
            .expect("encrypting a token")
    }

    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let untrusted =
            UntrustedToken::<Local, V4>::try_from(token).map_err(|_| TokenError::Malformed)?;
        let footer: Footer = serde_json::from_slice(untrusted.untrusted_footer())
            .map_err(|_| TokenError::Malformed)?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(kid, _)| *kid == footer.kid)
            .ok_or(TokenError::UnknownKey)?;
        let trusted = version4::LocalToken::decrypt(
            key,
            &untrusted,
            Some(untrusted.untrusted_footer()),
            Some(IMPLICIT),
        )
        .map_err(|_| TokenError::Invalid)?;
        let claims: Claims =
            serde_json::from_str(trusted.payload()).map_err(|_| TokenError::Invalid)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

fn new_key(now: u64) -> StoredKey {
    let bytes = random_bytes::<32>();
    StoredKey {
        kid: hex::encode(random_bytes::<8>()),
        key: STANDARD.encode(bytes),
        created_at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "u1".into(),
            sid: "s1".into(),
            iat: 1,
            exp,
        }
    }

    #[test]
    fn tokens_verify_until_they_expire_and_survive_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/token-keys.json");
        let ring = Keyring::load_or_create(&path, 0).unwrap();
        let old = ring.issue(&claims(1_000));
        assert_eq!(ring.verify(&old, 999), Ok(claims(1_000)));
        assert_eq!(ring.verify(&old, 1_000), Err(TokenError::Expired));

        let new_kid = Keyring::rotate(&path, 5).unwrap();
        let ring = Keyring::load_or_create(&path, 0).unwrap();
        assert_eq!(ring.current_kid(), new_kid);
        assert_eq!(
            ring.verify(&old, 10),
            Ok(claims(1_000)),
            "old key still verifies"
        );
        let new = ring.issue(&claims(1_000));
        assert!(new.starts_with("v4.local."));
        assert_eq!(ring.verify(&new, 10), Ok(claims(1_000)));

        // Another server's key: refused.
        let other_dir = tempfile::tempdir().unwrap();
        let other = Keyring::load_or_create(&other_dir.path().join("k.json"), 0).unwrap();
        assert_eq!(other.verify(&new, 10), Err(TokenError::UnknownKey));
    }

    #[test]
    fn tampered_and_forged_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::load_or_create(&dir.path().join("k.json"), 0).unwrap();
        let token = ring.issue(&claims(1_000));
        // Flip one character of the encrypted body.
        let body_at = "v4.local.".len() + 10;
        let mut bytes = token.clone().into_bytes();
        bytes[body_at] = if bytes[body_at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(ring.verify(&tampered, 1), Err(TokenError::Invalid));
        assert_eq!(
            ring.verify("v4.local.garbage", 1),
            Err(TokenError::Malformed)
        );
        assert_eq!(ring.verify("plx_x_y", 1), Err(TokenError::Malformed));
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        Keyring::load_or_create(&path, 0).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keyring::load_or_create(&path, 0).err().unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
