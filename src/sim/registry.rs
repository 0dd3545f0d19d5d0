//! The simulator's business state: device credentials per instance, device certificates, and
//! the rules the real service applies to them. Optionally journaled to a file (`--state`), one
//! JSON line per change, so a simulator restart or a killed worker finds the registry as it was.
//! Device certificates can be seeded from a CSV (`--device-certs`), since no action creates one.
//!
//! It never decides about signatures or flow control: those are settled before a call gets here.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::api::actions::DeviceCertificate;
use crate::secret::Secret;

/// What a repeated RegisterDeviceCredential does. The documents disagree
/// (flow-control.md, "Duplicate registration"), so the simulator offers both readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DupMode {
    /// Answer `DeviceCredentialExsit` (the error the metadata lists).
    #[default]
    Exist,
    /// Issue a new credential that replaces the old one ("the latest call wins").
    Reissue,
}

/// One stored credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredCredential {
    pub device_access_key_id: String,
    pub device_access_key_secret: Secret,
    pub create_time: i64,
    pub update_time: i64,
    /// How many credentials were ever issued for this ClientId (Register calls that created one).
    pub issued: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum JournalEntry {
    Put {
        instance: String,
        client_id: String,
        credential: StoredCredential,
    },
    Del {
        instance: String,
        client_id: String,
    },
    Cert {
        instance: String,
        certificate: DeviceCertificate,
    },
}

/// The outcome of a business call, before it is turned into HTTP.
pub type BusinessResult<T> = Result<T, (&'static str, String)>;

#[derive(Default)]
pub struct Registry {
    /// instance → ClientId → credential. BTreeMap so listings page in a stable order.
    credentials: HashMap<String, BTreeMap<String, StoredCredential>>,
    /// instance → (CaSn, DeviceSn) → certificate.
    certificates: HashMap<String, BTreeMap<(String, String), DeviceCertificate>>,
    /// ClientId → credentials ever issued, surviving UnRegister (for the `duplicates` stat).
    /// Ordered, not hashed: a rehash under the simulator's lock would stall every connection.
    issued: BTreeMap<String, u32>,
    journal: Option<File>,
}

impl Registry {
    /// Opens (and replays) a journal, or starts empty.
    pub fn open(state: Option<&Path>) -> std::io::Result<Self> {
        let mut registry = Registry::default();
        let Some(path) = state else {
            return Ok(registry);
        };
        // It holds every simulated secret: never through a link, only a file of this user, 0600.
        let mut journal = crate::ledger::open_private(path).map_err(|e| match e {
            crate::ledger::UnsafeFile::Io(e) => e,
            refused => std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("journal {}: {refused}", path.display()),
            ),
        })?;
        for (n, line) in BufReader::new(&journal).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<JournalEntry>(&line) {
                Ok(entry) => registry.apply(entry),
                // A torn last line from a killed simulator: everything before it stands.
                Err(e) => tracing::warn!(
                    "{}:{}: skipping unreadable journal line: {e}",
                    path.display(),
                    n + 1
                ),
            }
        }
        // Appended to from here on.
        std::io::Seek::seek(&mut journal, std::io::SeekFrom::End(0))?;
        registry.journal = Some(journal);
        Ok(registry)
    }

    fn apply(&mut self, entry: JournalEntry) {
        match entry {
            JournalEntry::Put {
                instance,
                client_id,
                credential,
            } => {
                let issued = self.issued.entry(client_id.clone()).or_default();
                *issued = (*issued).max(credential.issued);
                self.credentials
                    .entry(instance)
                    .or_default()
                    .insert(client_id, credential);
            }
            JournalEntry::Del {
                instance,
                client_id,
            } => {
                if let Some(map) = self.credentials.get_mut(&instance) {
                    map.remove(&client_id);
                }
            }
            JournalEntry::Cert {
                instance,
                certificate,
            } => {
                let key = (certificate.ca_sn.clone(), certificate.device_sn.clone());
                self.certificates
                    .entry(instance)
                    .or_default()
                    .insert(key, certificate);
            }
        }
    }

    /// Applies and journals a change. The write goes to the OS before the call is answered, so a
    /// killed simulator keeps every change it acknowledged (and some it did not: drop-after-apply).
    fn commit(&mut self, entry: JournalEntry) {
        if let Some(file) = &mut self.journal {
            let mut line = serde_json::to_string(&entry).expect("journal entries serialise");
            line.push('\n');
            if let Err(e) = file.write_all(line.as_bytes()) {
                tracing::error!("cannot write the simulator state journal: {e}");
            }
        }
        self.apply(entry);
    }

    pub fn seed_certificate(&mut self, instance: &str, certificate: DeviceCertificate) {
        self.commit(JournalEntry::Cert {
            instance: instance.to_owned(),
            certificate,
        });
    }

    /// Seeds every instance with the certificates of a CSV (columns `device_sn`, `ca_sn` and
    /// optionally `device_name`, `status`), keeping any the registry holds already.
    pub fn seed_certificates_from(
        &mut self,
        path: &Path,
        instances: &[String],
    ) -> std::io::Result<()> {
        for cert in read_device_certs(path)? {
            for instance in instances {
                if self
                    .certificate(instance, &cert.ca_sn, &cert.device_sn)
                    .is_err()
                {
                    self.seed_certificate(instance, cert.clone());
                }
            }
        }
        Ok(())
    }

    pub fn live_credentials(&self, instance: &str) -> usize {
        self.credentials.get(instance).map_or(0, BTreeMap::len)
    }

    pub fn get(&self, instance: &str, client_id: &str) -> Option<&StoredCredential> {
        self.credentials.get(instance)?.get(client_id)
    }

    pub fn register(
        &mut self,
        instance: &str,
        client_id: &str,
        dup_mode: DupMode,
        quota: Option<usize>,
        now_ms: i64,
        rng: &mut StdRng,
    ) -> BusinessResult<StoredCredential> {
        let existing = self.get(instance, client_id).cloned();
        if existing.is_some() && dup_mode == DupMode::Exist {
            return Err(("DeviceCredentialExsit", "Device Credential Exsit".into()));
        }
        if existing.is_none() && quota.is_some_and(|q| self.live_credentials(instance) >= q) {
            return Err((
                "DeviceCredentialNumExceed",
                "The number of device credentia exceeds the limit. Please revoke unused device certificates".into(),
            ));
        }
        let issued = self.issued.get(client_id).copied().unwrap_or(0) + 1;
        let credential = StoredCredential {
            device_access_key_id: credential_value(rng),
            device_access_key_secret: Secret::new(credential_value(rng)),
            create_time: now_ms,
            update_time: now_ms,
            issued,
        };
        self.commit(JournalEntry::Put {
            instance: instance.to_owned(),
            client_id: client_id.to_owned(),
            credential: credential.clone(),
        });
        Ok(credential)
    }

    /// Rotates the secret; the AccessKeyId stays (a choice: the documents do not say).
    pub fn refresh(
        &mut self,
        instance: &str,
        client_id: &str,
        now_ms: i64,
        rng: &mut StdRng,
    ) -> BusinessResult<StoredCredential> {
        let mut credential = self
            .get(instance, client_id)
            .cloned()
            .ok_or_else(not_found)?;
        credential.device_access_key_secret = Secret::new(credential_value(rng));
        credential.update_time = now_ms;
        self.commit(JournalEntry::Put {
            instance: instance.to_owned(),
            client_id: client_id.to_owned(),
            credential: credential.clone(),
        });
        Ok(credential)
    }

    pub fn unregister(&mut self, instance: &str, client_id: &str) -> BusinessResult<()> {
        self.get(instance, client_id).ok_or_else(not_found)?;
        self.commit(JournalEntry::Del {
            instance: instance.to_owned(),
            client_id: client_id.to_owned(),
        });
        Ok(())
    }

    /// ClientIds of one group, in order, from `offset`.
    pub fn list_client_ids(
        &self,
        instance: &str,
        group_id: &str,
        offset: usize,
        size: usize,
    ) -> (Vec<String>, usize) {
        let prefix = format!("{group_id}@@@");
        let all: Vec<&String> = self
            .credentials
            .get(instance)
            .map(|m| m.keys().filter(|k| k.starts_with(&prefix)).collect())
            .unwrap_or_default();
        let page = all
            .iter()
            .skip(offset)
            .take(size)
            .map(|s| (*s).clone())
            .collect();
        (page, all.len())
    }

    pub fn certificate(
        &self,
        instance: &str,
        ca_sn: &str,
        device_sn: &str,
    ) -> BusinessResult<&DeviceCertificate> {
        self.certificates
            .get(instance)
            .and_then(|m| m.get(&(ca_sn.to_owned(), device_sn.to_owned())))
            .ok_or((
                "FindDeviceBySnError",
                format!("Find device by sn error: no certificate {device_sn} under CA {ca_sn}"),
            ))
    }

    pub fn set_certificate_status(
        &mut self,
        instance: &str,
        ca_sn: &str,
        device_sn: &str,
        active: bool,
    ) -> BusinessResult<()> {
        let mut certificate = self.certificate(instance, ca_sn, device_sn)?.clone();
        certificate.status = if active { "1" } else { "0" }.to_owned();
        self.commit(JournalEntry::Cert {
            instance: instance.to_owned(),
            certificate,
        });
        Ok(())
    }

    pub fn list_certificates(
        &self,
        instance: &str,
        page_no: usize,
        page_size: usize,
    ) -> (Vec<DeviceCertificate>, usize) {
        let all = self.certificates.get(instance);
        let total = all.map_or(0, BTreeMap::len);
        let page = all
            .map(|m| {
                m.values()
                    .skip(page_no.saturating_sub(1) * page_size)
                    .take(page_size)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        (page, total)
    }

    /// Every credential, for `/__sim/credentials`: (instance, ClientId, credential).
    pub fn all_credentials(&self) -> Vec<(&str, &str, &StoredCredential)> {
        let mut out: Vec<_> = self
            .credentials
            .iter()
            .flat_map(|(i, m)| {
                m.iter()
                    .map(move |(c, cred)| (i.as_str(), c.as_str(), cred))
            })
            .collect();
        out.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        out
    }

    /// (credentials ever issued, ClientIds ever given one, ClientIds given more than one).
    pub fn issuance(&self) -> (u64, usize, Vec<String>) {
        let total = self.issued.values().map(|&n| n as u64).sum();
        let mut dups: Vec<String> = self
            .issued
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(c, _)| c.clone())
            .collect();
        dups.sort();
        (total, self.issued.len(), dups)
    }
}

/// The refusal of a credential that does not exist (Get, Refresh, UnRegister).
pub fn not_found() -> (&'static str, String) {
    (
        "DeviceCredentialNotFound",
        "Device Credential Not Found. Check if the device certificate is registered.".into(),
    )
}

fn read_device_certs(path: &Path) -> std::io::Result<Vec<DeviceCertificate>> {
    let bad = |m: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {m}", path.display()),
        )
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| bad(e.to_string()))?;
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (Some(sn), Some(ca)) = (col("device_sn"), col("ca_sn")) else {
        return Err(bad("needs columns device_sn and ca_sn".into()));
    };
    let (name, status) = (col("device_name"), col("status"));
    let mut out = Vec::new();
    for record in reader.records() {
        let r = record.map_err(|e| bad(e.to_string()))?;
        let get = |i: Option<usize>| i.and_then(|i| r.get(i)).unwrap_or_default().to_owned();
        let now = jiff::Timestamp::now().as_millisecond();
        out.push(DeviceCertificate {
            ca_sn: get(Some(ca)),
            device_content: format!("-----BEGIN CERTIFICATE-----\n(simulated certificate of {})\n-----END CERTIFICATE-----", get(Some(sn))),
            device_name: get(name),
            device_sn: get(Some(sn)),
            status: if get(status) == "0" { "0".into() } else { "1".into() },
            valid_begin: now.to_string(),
            valid_end: (now + 365 * 86_400_000).to_string(),
        });
    }
    Ok(out)
}

/// `DC.` + 22 base62 characters, the shape of the documented examples.
fn credential_value(rng: &mut StdRng) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut s = String::with_capacity(25);
    s.push_str("DC.");
    for _ in 0..22 {
        s.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn journal_survives_a_restart_and_counts_reissues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.jsonl");
        let mut rng = StdRng::seed_from_u64(1);
        {
            let mut r = Registry::open(Some(&path)).unwrap();
            r.register("i", "GID_test@@@a", DupMode::Reissue, None, 1, &mut rng)
                .unwrap();
            r.register("i", "GID_test@@@a", DupMode::Reissue, None, 2, &mut rng)
                .unwrap();
            r.register("i", "GID_test@@@b", DupMode::Exist, None, 3, &mut rng)
                .unwrap();
            r.unregister("i", "GID_test@@@b").unwrap();
        }
        let r = Registry::open(Some(&path)).unwrap();
        assert_eq!(r.live_credentials("i"), 1);
        let (total, ids, dups) = r.issuance();
        assert_eq!((total, ids, dups), (3, 2, vec!["GID_test@@@a".to_owned()]));
        assert!(
            r.get("i", "GID_test@@@a")
                .unwrap()
                .device_access_key_id
                .starts_with("DC.")
        );
    }

    #[test]
    fn exist_mode_and_quota() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut r = Registry::open(None).unwrap();
        r.register("i", "GID_test@@@a", DupMode::Exist, Some(1), 1, &mut rng)
            .unwrap();
        assert_eq!(
            r.register("i", "GID_test@@@a", DupMode::Exist, Some(1), 1, &mut rng)
                .unwrap_err()
                .0,
            "DeviceCredentialExsit"
        );
        assert_eq!(
            r.register("i", "GID_test@@@b", DupMode::Exist, Some(1), 1, &mut rng)
                .unwrap_err()
                .0,
            "DeviceCredentialNumExceed"
        );
        assert_eq!(
            r.refresh("i", "GID_test@@@zz", 1, &mut rng).unwrap_err().0,
            "DeviceCredentialNotFound"
        );
    }
}
