//! Secrets sealed at rest: a ledger given age X25519 recipients stores every device secret
//! encrypted to them, so the worker writes secrets it cannot read back, and a stolen ledger
//! (file, `-wal`, backups) reveals none. Only `export --identity FILE` opens them.
//!
//! A sealed value is [`SEALED_PREFIX`] then the age file (binary format, one per secret) in
//! standard base64. Plain DeviceAccessKeySecrets never begin so. Whether two secrets are the same
//! is told by [`digest`] (SHA-256 of a high-entropy secret: it reveals nothing usable), since two
//! sealings of one secret differ.

use std::io::{Read, Write};
use std::path::Path;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

pub const SEALED_PREFIX: &str = "age:";

/// Whether a stored value is sealed.
pub fn is_sealed(value: &Secret) -> bool {
    value.expose().starts_with(SEALED_PREFIX)
}

/// A fingerprint of a plain secret, to tell a new secret from the same one stored again.
pub fn digest(secret: &Secret) -> String {
    let hash = Sha256::digest(secret.expose().as_bytes());
    hash.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The recipients a ledger seals to.
#[derive(Clone)]
pub struct Sealer {
    recipients: Vec<age::x25519::Recipient>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({})", self.to_meta())
    }
}

impl Sealer {
    /// Parses `age1…` recipients (public keys: not secret). At least one.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Sealer, String> {
        let mut recipients = Vec::new();
        for r in list {
            let r = r.as_ref().trim();
            let parsed = r.parse::<age::x25519::Recipient>().map_err(|e| {
                format!("`{r}` is not an age X25519 recipient (age1…, as age-keygen prints): {e}")
            })?;
            if !recipients
                .iter()
                .any(|k: &age::x25519::Recipient| k.to_string() == r)
            {
                recipients.push(parsed);
            }
        }
        if recipients.is_empty() {
            return Err("no recipient given".into());
        }
        Ok(Sealer { recipients })
    }

    /// The recipients as the ledger stores them: sorted, comma-separated.
    pub fn to_meta(&self) -> String {
        let mut all: Vec<String> = self.recipients.iter().map(|r| r.to_string()).collect();
        all.sort();
        all.join(",")
    }

    pub fn from_meta(meta: &str) -> Result<Sealer, String> {
        Sealer::parse(&meta.split(',').collect::<Vec<_>>())
    }

    /// Seals a plain secret; a sealed one is returned as it is.
    pub fn seal(&self, secret: &Secret) -> Result<Secret, String> {
        if is_sealed(secret) {
            return Ok(secret.clone());
        }
        let encryptor = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(|e| format!("cannot seal: {e}"))?;
        let mut sealed = Vec::with_capacity(256);
        let mut writer = encryptor
            .wrap_output(&mut sealed)
            .map_err(|e| format!("cannot seal: {e}"))?;
        writer
            .write_all(secret.expose().as_bytes())
            .and_then(|()| writer.finish().map(drop))
            .map_err(|e| format!("cannot seal: {e}"))?;
        Ok(Secret::new(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(sealed)
        )))
    }
}

/// The identities that open a sealed ledger's secrets (an age identity file).
pub struct Opener {
    identities: Vec<Box<dyn age::Identity>>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opener({} identities)", self.identities.len())
    }
}

impl Opener {
    /// Reads an age identity file (`AGE-SECRET-KEY-1…` lines, `#` comments), as age-keygen
    /// writes it. Errors name the file, never its content.
    pub fn from_file(path: &Path) -> Result<Opener, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the identity file {shown}: {e}"))?;
        let identities = age::IdentityFile::from_buffer(text.as_bytes())
            .and_then(|f| f.into_identities().map_err(std::io::Error::other))
            .map_err(|_| {
                format!("{shown} is not an age identity file (AGE-SECRET-KEY-1… lines)")
            })?;
        if identities.is_empty() {
            return Err(format!("{shown} holds no age identity"));
        }
        Ok(Opener { identities })
    }

    /// Opens a sealed value; a plain one is returned as it is.
    pub fn open(&self, value: &Secret) -> Result<Secret, String> {
        let Some(encoded) = value.expose().strip_prefix(SEALED_PREFIX) else {
            return Ok(value.clone());
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "a sealed secret in the ledger is damaged".to_owned())?;
        let decryptor = age::Decryptor::new(&bytes[..])
            .map_err(|_| "a sealed secret in the ledger is damaged".to_owned())?;
        let mut reader = decryptor
            .decrypt(self.identities.iter().map(|i| i.as_ref()))
            .map_err(|_| {
                "the identity does not open this ledger's secrets (sealed to other recipients)"
                    .to_owned()
            })?;
        let mut plain = String::new();
        reader
            .read_to_string(&mut plain)
            .map_err(|_| "a sealed secret in the ledger is damaged".to_owned())?;
        Ok(Secret::new(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn a_sealed_secret_opens_with_its_identity_only() {
        let (key, other) = (
            age::x25519::Identity::generate(),
            age::x25519::Identity::generate(),
        );
        let sealer = Sealer::parse(&[key.to_public().to_string()]).unwrap();
        let plain = Secret::new("DC.topsecretvalue");
        let sealed = sealer.seal(&plain).unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.expose().contains("topsecret"));
        assert_eq!(
            sealer.seal(&sealed).unwrap(),
            sealed,
            "sealing is not repeated"
        );
        let dir = tempfile::tempdir().unwrap();
        let (mine, theirs) = (dir.path().join("mine.txt"), dir.path().join("theirs.txt"));
        std::fs::write(
            &mine,
            format!("# a key\n{}\n", key.to_string().expose_secret()),
        )
        .unwrap();
        std::fs::write(&theirs, other.to_string().expose_secret()).unwrap();
        assert_eq!(
            Opener::from_file(&mine).unwrap().open(&sealed).unwrap(),
            plain
        );
        let refused = Opener::from_file(&theirs)
            .unwrap()
            .open(&sealed)
            .unwrap_err();
        assert!(refused.contains("other recipients"), "{refused}");
        assert_eq!(digest(&plain), digest(&Secret::new("DC.topsecretvalue")));
        assert_ne!(digest(&plain), digest(&Secret::new("DC.other")));
    }

    #[test]
    fn recipients_are_checked_and_kept_sorted() {
        let a = age::x25519::Identity::generate().to_public().to_string();
        let b = age::x25519::Identity::generate().to_public().to_string();
        let one = Sealer::parse(&[&b, &a, &a]).unwrap().to_meta();
        assert_eq!(one, Sealer::parse(&[&a, &b]).unwrap().to_meta());
        assert_eq!(Sealer::from_meta(&one).unwrap().to_meta(), one);
        let bad = Sealer::parse(&["ssh-ed25519 AAAA"]).unwrap_err();
        assert!(bad.contains("not an age X25519 recipient"), "{bad}");
    }
}
