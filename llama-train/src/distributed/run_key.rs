//! The run's secret and what it signs with: every message between the ranks and the
//! coordinator carries a keyed BLAKE3 MAC, so that a process without the run's token can
//! neither join, nor fetch a buffer, nor inject one.
//!
//! The token (`LLAMA_RUN_TOKEN`, at least 32 hex digits = 128 bits) travels through the
//! environment only: a command line is readable by every user of the machine. Without a token
//! (a run on one machine, or `--insecure`), the MACs use a key everybody knows: they still catch
//! a corrupted or foreign message, but they keep nobody out.

use std::fmt;
use std::str::FromStr;

use crate::distributed::settings::CollectiveError;

/// The environment variable the token is read from.
pub const TOKEN_VARIABLE: &str = "LLAMA_RUN_TOKEN";

/// Bytes of a MAC.
pub const MAC_BYTES: usize = 32;

/// Fewest hex digits a token may have (128 bits).
const MIN_TOKEN_DIGITS: usize = 32;

/// BLAKE3's key-derivation context: a key for this protocol only, whatever else the token
/// is used for.
const CONTEXT: &str = "llama-burn 2026-12-07 data-parallel run token";

/// A run's secret: hex digits, at least 128 bits of them.
#[derive(Clone, PartialEq, Eq)]
pub struct RunToken(String);

impl RunToken {
    /// A fresh token of 256 random bits (from the operating system's generator, through
    /// `rand`'s thread generator, a CSPRNG).
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The token in `LLAMA_RUN_TOKEN`, if set.
    pub fn from_env() -> Result<Option<Self>, CollectiveError> {
        match std::env::var(TOKEN_VARIABLE) {
            Ok(text) => text.parse().map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(CollectiveError::Token),
        }
    }

    /// The token's text, to pass to a child process's environment.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for RunToken {
    type Err = CollectiveError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.len() < MIN_TOKEN_DIGITS || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CollectiveError::Token);
        }
        Ok(Self(text.to_ascii_lowercase()))
    }
}

/// Never printed: a token in a log would open the run.
impl fmt::Debug for RunToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunToken(…)")
    }
}

/// The key that a run's messages are signed with.
#[derive(Clone)]
pub struct RunKey([u8; 32]);

impl RunKey {
    /// The key of `token`; without one, a key everybody knows (integrity, no secrecy).
    pub fn new(token: Option<&RunToken>) -> Self {
        let material = token.map_or("", |t| t.0.as_str());
        Self(blake3::derive_key(CONTEXT, material.as_bytes()))
    }

    /// The MAC of `parts`, each prefixed with its length so that no two different lists of
    /// parts sign alike.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; MAC_BYTES] {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        *hasher.finalize().as_bytes()
    }

    /// Whether `mac` is the MAC of `parts` (compared in constant time).
    pub fn verify(&self, parts: &[&[u8]], mac: &[u8; MAC_BYTES]) -> bool {
        blake3::Hash::from_bytes(self.mac(parts)) == blake3::Hash::from_bytes(*mac)
    }
}

impl fmt::Debug for RunKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunKey(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_need_128_bits_of_hex_and_are_never_printed() {
        assert!("0123456789abcdef0123456789abcdef"
            .parse::<RunToken>()
            .is_ok());
        for bad in ["", "0123456789abcdef", "0123456789abcdef0123456789abcdeg"] {
            assert!(bad.parse::<RunToken>().is_err(), "{bad}");
        }
        let token = RunToken::generate();
        assert_eq!(token.expose().len(), 64);
        assert_ne!(token, RunToken::generate());
        assert!(!format!("{token:?}").contains(token.expose()));
    }

    #[test]
    fn macs_depend_on_the_key_and_on_every_part() {
        let token: RunToken = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let key = RunKey::new(Some(&token));
        let mac = key.mac(&[b"join", b"ab", b"c"]);
        assert!(key.verify(&[b"join", b"ab", b"c"], &mac));
        assert!(
            !key.verify(&[b"join", b"a", b"bc"], &mac),
            "parts are framed"
        );
        assert!(!RunKey::new(None).verify(&[b"join", b"ab", b"c"], &mac));
        let other: RunToken = "1123456789abcdef0123456789abcdef".parse().unwrap();
        assert!(!RunKey::new(Some(&other)).verify(&[b"join", b"ab", b"c"], &mac));
    }
}
