//! Secret settings are sealed at rest with XChaCha20-Poly1305 under a key kept apart from
//! the database (a 0600 key file in the key directory, or `PLEXUS_SECRETS_KEY`), so a
//! copy of the database alone does not reveal them.

use super::credentials::random_bytes;
use super::keyfile::{self, KeyFileError};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use orion::hazardous::aead::xchacha20poly1305::{Nonce, SecretKey, XChaCha20Poly1305};
use std::path::Path;

const PREFIX: &str = "sealed:v1:";
const TAG_LEN: usize = 16;

pub struct Sealer {
    key: SecretKey,
}

impl Sealer {
    /// `PLEXUS_SECRETS_KEY` (base64 of 32 bytes) when given; otherwise the key file,
    /// created on first use.
    pub fn load_or_create(path: &Path, from_env: Option<&str>) -> Result<Sealer, KeyFileError> {
        let invalid = |where_: String, message: &str| KeyFileError::Invalid {
            path: where_,
            message: message.into(),
        };
        let (text, origin) = match from_env {
            Some(v) => (v.trim().to_owned(), "PLEXUS_SECRETS_KEY".to_owned()),
            None => match keyfile::read(path)? {
                Some(t) => (t.trim().to_owned(), path.display().to_string()),
                None => {
                    let t = STANDARD.encode(random_bytes::<32>());
                    keyfile::write(path, &t)?;
                    (t, path.display().to_string())
                }
            },
        };
        let bytes = STANDARD
            .decode(&text)
            .map_err(|_| invalid(origin.clone(), "not base64"))?;
        let key = SecretKey::try_from(bytes.as_slice())
            .ok()
            .filter(|_| bytes.len() == 32)
            .ok_or_else(|| invalid(origin, "a secrets key is 32 bytes, base64-encoded"))?;
        Ok(Sealer { key })
    }

    /// Seals `plain`, bound to `label` (a setting sealed under one key name cannot be
    /// moved to another).
    pub fn seal(&self, label: &str, plain: &str) -> String {
        let nonce_bytes = random_bytes::<24>();
        let nonce = Nonce::try_from(&nonce_bytes).expect("24 bytes");
        let mut out = vec![0u8; plain.len() + TAG_LEN];
        XChaCha20Poly1305::seal(
            &self.key,
            &nonce,
            plain.as_bytes(),
            Some(label.as_bytes()),
            &mut out,
        )
        .expect("sealing into a buffer of the right size");
        let mut all = nonce_bytes.to_vec();
        all.extend_from_slice(&out);
        format!("{PREFIX}{}", STANDARD.encode(all))
    }

    pub fn open(&self, label: &str, sealed: &str) -> Option<String> {
        let all = STANDARD.decode(sealed.strip_prefix(PREFIX)?).ok()?;
        if all.len() < 24 + TAG_LEN {
            return None;
        }
        let (nonce, body) = all.split_at(24);
        let nonce = Nonce::try_from(nonce).ok()?;
        let mut out = vec![0u8; body.len() - TAG_LEN];
        XChaCha20Poly1305::open(&self.key, &nonce, body, Some(label.as_bytes()), &mut out).ok()?;
        String::from_utf8(out).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_label() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::load_or_create(&dir.path().join("secrets.key"), None).unwrap();
        let sealed = sealer.seal("providers.openai.api_key", "\"sk-live-123\"");
        assert!(!sealed.contains("sk-live"));
        assert_eq!(
            sealer.open("providers.openai.api_key", &sealed).as_deref(),
            Some("\"sk-live-123\"")
        );
        assert_eq!(sealer.open("other.key", &sealed), None);
        let other = Sealer::load_or_create(&dir.path().join("other.key"), None).unwrap();
        assert_eq!(other.open("providers.openai.api_key", &sealed), None);
        let again = Sealer::load_or_create(&dir.path().join("secrets.key"), None).unwrap();
        assert!(again.open("providers.openai.api_key", &sealed).is_some());
        assert!(Sealer::load_or_create(dir.path(), Some("c2hvcnQ=")).is_err());
    }
}
