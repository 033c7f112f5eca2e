//! Secrets users hold: passwords (argon2id), API keys and refresh tokens (random, stored
//! as SHA-256), all compared in constant time.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of an API key's secret as handed to users: `plx_<key id>_<random>`.
pub const API_KEY_PREFIX: &str = "plx_";
/// Prefix of a refresh token: `plxr_<session id>_<random>`.
pub const REFRESH_PREFIX: &str = "plxr_";

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random source");
    b
}

/// 256 random bits, URL-safe text.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// A short random id (96 bits), for key and session lookup ids.
pub fn random_id() -> String {
    hex::encode(random_bytes::<12>())
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

pub fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

pub fn hash_password(password: &str) -> String {
    let salt = random_bytes::<16>();
    argon2::Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .expect("argon2 accepts a 16-byte salt")
        .to_string()
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// Spends about as long as a real verification, so that a login for an unknown user
/// takes as long as one with a wrong password.
pub fn burn_password_time(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let phc = DUMMY.get_or_init(|| hash_password("not a password anyone has"));
    let _ = verify_password(password, phc);
}

/// Splits `<prefix><id>_<secret>` into (id, secret).
pub fn split_secret<'a>(token: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = token.strip_prefix(prefix)?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// A good-enough password: long, not all one kind of character.
pub fn check_password_strength(password: &str) -> Result<(), String> {
    if password.chars().count() < 12 {
        return Err("a password needs at least 12 characters".into());
    }
    if password.len() > 1024 {
        return Err("a password is at most 1024 bytes".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_themselves() {
        let phc = hash_password("correct horse battery");
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &phc));
        assert!(!verify_password("correct horse batterz", &phc));
        assert!(!verify_password("anything", "not a hash"));
    }

    #[test]
    fn secrets_split_into_id_and_secret() {
        assert_eq!(
            split_secret("plx_ab12_s3cr_et", API_KEY_PREFIX),
            Some(("ab12", "s3cr_et"))
        );
        assert_eq!(split_secret("plx__x", API_KEY_PREFIX), None);
        assert_eq!(split_secret("plxr_ab_", REFRESH_PREFIX), None);
        assert_eq!(split_secret("v4.local.x", API_KEY_PREFIX), None);
    }
}
