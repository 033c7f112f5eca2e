//! The audit log's hash chain. Each record's hash covers its own fields and the hash of
//! the record before it, so editing, deleting or reordering stored records breaks the
//! chain at the first record touched. Hashing is over the exact stored `details` text, so
//! the result does not depend on how a JSON library orders keys.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Security events (logins, users, keys, settings, denials) or workflow events (runs,
/// approvals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    Security,
    Workflow,
}

impl Domain {
    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Security => "security",
            Domain::Workflow => "workflow",
        }
    }

    pub fn parse(s: &str) -> Option<Domain> {
        match s {
            "security" => Some(Domain::Security),
            "workflow" => Some(Domain::Workflow),
            _ => None,
        }
    }
}

/// What is appended: the store gives it a sequence number and chains it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub time: u64,
    /// `user:NAME`, `key:ID`, `local:USER`, `anonymous`, `system`.
    pub actor: String,
    pub domain: Domain,
    /// e.g. `login.succeeded`, `run.started`, `approval.granted`.
    pub action: String,
    /// What it was done to: a user, a run, `run/step`, a setting.
    pub target: String,
    /// A JSON object, stored as this exact text.
    pub details: String,
}

/// A stored record, as read back for listing and verification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub time: u64,
    pub actor: String,
    pub domain: String,
    pub action: String,
    pub target: String,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of a record given the hash before it: SHA-256 over every field,
/// length-prefixed so that no two different records encode alike. `text` is actor,
/// domain, action, target and details, in that order.
pub fn record_hash(prev_hash: &str, seq: u64, time: u64, text: [&str; 5]) -> String {
    let mut h = Sha256::new();
    h.update(b"plexus-audit-v1");
    for field in [
        prev_hash.as_bytes(),
        &seq.to_be_bytes(),
        &time.to_be_bytes(),
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    for field in text {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

impl AuditRecord {
    /// Chains an entry after the record with `prev` = (seq, hash).
    pub fn chain(entry: &AuditEntry, prev: Option<(u64, &str)>) -> AuditRecord {
        let (seq, prev_hash) = match prev {
            Some((seq, hash)) => (seq + 1, hash.to_owned()),
            None => (1, GENESIS.to_owned()),
        };
        let hash = record_hash(
            &prev_hash,
            seq,
            entry.time,
            [
                &entry.actor,
                entry.domain.as_str(),
                &entry.action,
                &entry.target,
                &entry.details,
            ],
        );
        AuditRecord {
            seq,
            time: entry.time,
            actor: entry.actor.clone(),
            domain: entry.domain.as_str().to_owned(),
            action: entry.action.clone(),
            target: entry.target.clone(),
            details: entry.details.clone(),
            prev_hash,
            hash,
        }
    }

    fn expected_hash(&self) -> String {
        record_hash(
            &self.prev_hash,
            self.seq,
            self.time,
            [
                &self.actor,
                &self.domain,
                &self.action,
                &self.target,
                &self.details,
            ],
        )
    }
}

/// Why verification stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("audit record {seq}: {problem}")]
pub struct BrokenChain {
    /// The first record that does not fit (or the sequence number that is missing).
    pub seq: u64,
    pub problem: String,
}

/// Checks records in stored order, one at a time, so a chain of any length is verified in
/// constant memory.
#[derive(Debug, Default)]
pub struct ChainVerifier {
    last: Option<(u64, String)>,
    checked: u64,
}

impl ChainVerifier {
    pub fn push(&mut self, r: &AuditRecord) -> Result<(), BrokenChain> {
        let (want_seq, want_prev) = match &self.last {
            Some((seq, hash)) => (seq + 1, hash.as_str()),
            None => (1, GENESIS),
        };
        let broken = |seq, problem: String| Err(BrokenChain { seq, problem });
        if r.seq != want_seq {
            return broken(
                want_seq,
                format!(
                    "missing: record {} comes where record {want_seq} should (records were deleted or reordered)",
                    r.seq
                ),
            );
        }
        if r.prev_hash != want_prev {
            return broken(
                r.seq,
                "its prev_hash is not the hash of the record before it (records were reordered, replaced or deleted)".into(),
            );
        }
        if r.expected_hash() != r.hash {
            return broken(
                r.seq,
                "its content does not match its hash (the record was edited)".into(),
            );
        }
        self.last = Some((r.seq, r.hash.clone()));
        self.checked += 1;
        Ok(())
    }

    /// How many records were checked, and the hash of the last one (the chain's head).
    pub fn finish(self) -> (u64, String) {
        let head = self.last.map_or_else(|| GENESIS.to_owned(), |(_, h)| h);
        (self.checked, head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            time: 1_700_000_000_000,
            actor: "user:ada".into(),
            domain: Domain::Security,
            action: action.into(),
            target: "user:grace".into(),
            details: r#"{"role":"engineer"}"#.into(),
        }
    }

    fn chain(n: usize) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let prev = out.last().map(|r| (r.seq, r.hash.as_str()));
            let rec = AuditRecord::chain(&entry(&format!("a{i}")), prev);
            out.push(rec);
        }
        out
    }

    fn verify(records: &[AuditRecord]) -> Result<(u64, String), BrokenChain> {
        let mut v = ChainVerifier::default();
        for r in records {
            v.push(r)?;
        }
        Ok(v.finish())
    }

    #[test]
    fn an_intact_chain_verifies() {
        let records = chain(5);
        let (n, head) = verify(&records).unwrap();
        assert_eq!((n, head), (5, records[4].hash.clone()));
        assert_eq!(verify(&[]).unwrap(), (0, GENESIS.to_owned()));
    }

    #[test]
    fn edits_deletions_and_reorders_are_found_at_the_first_bad_record() {
        let mut edited = chain(5);
        edited[2].details = r#"{"role":"admin"}"#.into();
        assert_eq!(verify(&edited).unwrap_err().seq, 3);

        let mut deleted = chain(5);
        deleted.remove(1);
        let err = verify(&deleted).unwrap_err();
        assert_eq!(err.seq, 2, "{err}");
        assert!(err.problem.contains("missing"));

        let mut swapped = chain(5);
        swapped.swap(1, 3);
        assert_eq!(verify(&swapped).unwrap_err().seq, 2);

        // Renumbering the rest after a deletion does not help: the hashes still chain wrong.
        let mut renumbered = chain(5);
        renumbered.remove(1);
        for (i, r) in renumbered.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
        }
        assert_eq!(verify(&renumbered).unwrap_err().seq, 2);

        // Rehashing an edited record alone breaks the link to the next one.
        let mut rehashed = chain(5);
        rehashed[2].actor = "user:mallory".into();
        rehashed[2].hash = rehashed[2].expected_hash();
        assert_eq!(verify(&rehashed).unwrap_err().seq, 4);
    }

    #[test]
    fn field_boundaries_are_part_of_the_hash() {
        let a = record_hash(GENESIS, 1, 2, ["ab", "c", "d", "e", "{}"]);
        let b = record_hash(GENESIS, 1, 2, ["a", "bc", "d", "e", "{}"]);
        assert_ne!(a, b);
    }
}
