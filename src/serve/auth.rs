//! Authentication (API tokens per organization, stored hashed) and the authorization rule.
//!
//! The rule: asset-level data (an asset's events, state, history) belongs to the asset's
//! organization, and only that organization (or an admin organization) reads, subscribes to,
//! replays or writes it. City-level data (cell aggregates, events about no asset such as
//! incidents and weather, cell alerts) is shared by every authenticated organization.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::config::Organization;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    /// The organization.
    pub(crate) org: Arc<str>,
    /// Sees everything.
    pub(crate) admin: bool,
}

impl Principal {
    /// Whether this principal may see or write data of `owner`'s.
    pub(crate) fn may_access(&self, owner: &str) -> bool {
        self.admin || *self.org == *owner
    }

    /// Whether this principal may see data owned by `owner`: an asset of no organization
    /// only admins see.
    pub(crate) fn may_see(&self, owner: Option<&str>) -> bool {
        self.admin || owner.is_some_and(|o| *self.org == *o)
    }
}

/// Why a caller was not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("missing credentials: send `authorization: Bearer <token>`")]
    Missing,
    #[error("malformed credentials: expected `Bearer <token>`")]
    Malformed,
    #[error("unknown or revoked token")]
    Unknown,
}

/// The token table: SHA-256 of each token → its organization.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tokens {
    by_hash: HashMap<[u8; 32], Principal>,
}

/// Hex SHA-256 of a token, as the configuration stores it.
pub(crate) fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A fresh random token (32 bytes of the OS's randomness, URL-safe base64).
pub(crate) fn new_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    format!("ct_{}", base64::prelude::BASE64_URL_SAFE_NO_PAD.encode(bytes))
}

impl Tokens {
    /// The table for the configured organizations (hashes are checked by the config).
    pub(crate) fn new(organizations: &[Organization]) -> Self {
        let mut by_hash = HashMap::new();
        for org in organizations {
            let principal = Principal { org: Arc::from(org.name.as_str()), admin: org.admin };
            for hash in &org.token_sha256 {
                if let Some(hash) = parse_hex(hash) {
                    by_hash.insert(hash, principal.clone());
                }
            }
        }
        Tokens { by_hash }
    }

    /// The principal for an `authorization` header value (`Bearer <token>`).
    pub(crate) fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Malformed)?;
        self.token(token)
    }

    /// The principal for a bare token.
    pub(crate) fn token(&self, token: &str) -> Result<Principal, AuthError> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash).cloned().ok_or(AuthError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_by_their_hash_only() {
        let token = new_token();
        let orgs = [Organization { name: "acme".into(), token_sha256: vec![hash_token(&token)], admin: false }];
        let tokens = Tokens::new(&orgs);
        let principal = tokens.authenticate(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(&*principal.org, "acme");
        assert!(principal.may_access("acme") && !principal.may_access("globex"));
        assert_eq!(tokens.authenticate(None), Err(AuthError::Missing));
        assert_eq!(tokens.authenticate(Some(&token)), Err(AuthError::Malformed));
        assert_eq!(tokens.authenticate(Some(&format!("Bearer {token}x"))), Err(AuthError::Unknown));
        assert_ne!(new_token(), token);
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
