//! The simulator's state: droplets indexed by ID and by tag, pending transitions ordered by due time,
//! and a journal file that survives restarts.
//!
//! # Guarantees
//! - Every request costs time in proportion to what it touches: a lookup by ID or tag never scans every
//!   droplet, and [`Store::advance`] visits only the transitions that are due.
//! - Each change appends one JSON line to the journal (written through before the response is sent),
//!   instead of rewriting the whole state; the journal is compacted at start and whenever it has grown
//!   to several times the live state. A simulator killed at any moment restarts with every change it
//!   answered for.
//! - The whole-state JSON file of earlier versions is still read (and rewritten as a journal).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A pending state change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub at_ms: i64,
    pub status: String,
    pub size: Option<String>,
    pub remove: bool,
}

/// A simulated droplet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SimDroplet {
    pub id: u64,
    pub name: String,
    pub status: String,
    pub size: String,
    pub region: String,
    pub image: String,
    pub tags: Vec<String>,
    pub ipv6: bool,
    pub backups: bool,
    pub created_at: String,
    pub pending: Option<Pending>,
    /// The VPC asked for at create, if any.
    #[serde(default)]
    pub vpc_uuid: Option<String>,
    /// The monitoring agent asked for at create.
    #[serde(default)]
    pub monitoring: bool,
    /// Public outbound transfer this month, bytes (set by tests through `/_sim/droplets/{id}/transfer`).
    #[serde(default)]
    pub transfer_bytes: i64,
    /// The firewalls that name it (`POST /v2/firewalls/{id}/droplets`).
    #[serde(default)]
    pub firewalls: Vec<String>,
}

/// A simulated droplet snapshot: taken (listed) once `ready_at_ms` has passed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SimSnapshot {
    pub id: u64,
    pub name: String,
    pub droplet_id: u64,
    pub size_gb: f64,
    pub created_at: String,
    pub ready_at_ms: i64,
    /// How often a droplet was restored from it.
    #[serde(default)]
    pub restores: u32,
}

/// One line of the journal.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    /// A droplet as it now is.
    Put(Box<SimDroplet>),
    /// A droplet is gone.
    Del(u64),
    /// The next droplet ID.
    NextId(u64),
    /// A token was revoked.
    Revoke(String),
    /// A snapshot as it now is.
    Snap(SimSnapshot),
    /// A snapshot is gone.
    SnapDel(u64),
}

/// The whole-state file of earlier versions.
#[derive(Deserialize)]
struct Legacy {
    next_id: u64,
    droplets: Vec<SimDroplet>,
    #[serde(default)]
    revoked_tokens: Vec<String>,
}

const FIRST_ID: u64 = 100_000_001;

/// The simulator's state (see the module docs).
pub struct Store {
    next_id: u64,
    droplets: BTreeMap<u64, SimDroplet>,
    by_tag: HashMap<String, BTreeSet<u64>>,
    due: BTreeSet<(i64, u64)>,
    revoked_tokens: Vec<String>,
    snapshots: BTreeMap<u64, SimSnapshot>,
    path: PathBuf,
    journal: Option<std::io::BufWriter<std::fs::File>>,
    records: usize,
}

pub(crate) fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Store {
    /// Loads the state (journal or legacy file), or starts empty when there is none; then compacts it.
    pub fn load(path: &Path) -> Result<Self, String> {
        let mut s = Store {
            next_id: FIRST_ID,
            droplets: BTreeMap::new(),
            by_tag: HashMap::new(),
            due: BTreeSet::new(),
            revoked_tokens: Vec::new(),
            snapshots: BTreeMap::new(),
            path: path.to_path_buf(),
            journal: None,
            records: 0,
        };
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<Legacy>(&bytes) {
                Ok(l) => {
                    s.next_id = l.next_id;
                    s.revoked_tokens = l.revoked_tokens;
                    for d in l.droplets {
                        s.index(d);
                    }
                }
                Err(_) => {
                    for (n, line) in bytes.lines().enumerate() {
                        let line = line.map_err(|e| e.to_string())?;
                        if line.trim().is_empty() {
                            continue;
                        }
                        match serde_json::from_str::<Record>(&line) {
                            Ok(r) => s.replay(r),
                            // A line cut short by a crash mid-write: everything before it stands.
                            Err(e) if n > 0 => {
                                tracing::warn!(line = n + 1, error = %e, "ignoring a damaged journal line");
                            }
                            Err(e) => return Err(format!("not a simulator state file: {e}")),
                        }
                    }
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.to_string()),
        }
        s.compact().map_err(|e| e.to_string())?;
        Ok(s)
    }

    fn replay(&mut self, r: Record) {
        match r {
            Record::Put(d) => {
                self.unindex(d.id);
                self.index(*d);
            }
            Record::Del(id) => {
                self.unindex(id);
            }
            Record::NextId(n) => self.next_id = n,
            Record::Revoke(t) => {
                if !self.revoked_tokens.contains(&t) {
                    self.revoked_tokens.push(t);
                }
            }
            Record::Snap(snap) => {
                self.snapshots.insert(snap.id, snap);
            }
            Record::SnapDel(id) => {
                self.snapshots.remove(&id);
            }
        }
    }

    fn index(&mut self, d: SimDroplet) {
        for t in &d.tags {
            self.by_tag.entry(t.clone()).or_default().insert(d.id);
        }
        if let Some(p) = &d.pending {
            self.due.insert((p.at_ms, d.id));
        }
        self.droplets.insert(d.id, d);
    }

    fn unindex(&mut self, id: u64) -> Option<SimDroplet> {
        let d = self.droplets.remove(&id)?;
        for t in &d.tags {
            if let Some(ids) = self.by_tag.get_mut(t) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_tag.remove(t);
                }
            }
        }
        if let Some(p) = &d.pending {
            self.due.remove(&(p.at_ms, id));
        }
        Some(d)
    }

    /// Rewrites the journal as one record per live object (temp file + rename), and keeps it open.
    fn compact(&mut self) -> std::io::Result<()> {
        self.journal = None;
        let tmp = self.path.with_extension("tmp");
        {
            let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            let mut line = |r: &Record| -> std::io::Result<()> {
                serde_json::to_writer(&mut w, r)?;
                w.write_all(b"\n")
            };
            line(&Record::NextId(self.next_id))?;
            for t in &self.revoked_tokens {
                line(&Record::Revoke(t.clone()))?;
            }
            for d in self.droplets.values() {
                line(&Record::Put(Box::new(d.clone())))?;
            }
            for snap in self.snapshots.values() {
                line(&Record::Snap(snap.clone()))?;
            }
            w.flush()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        let f = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        self.journal = Some(std::io::BufWriter::new(f));
        self.records = 1 + self.revoked_tokens.len() + self.droplets.len() + self.snapshots.len();
        Ok(())
    }

    /// Appends records to the journal and writes them through.
    fn log(&mut self, records: &[Record]) {
        let result = (|| -> std::io::Result<()> {
            let j = self
                .journal
                .as_mut()
                .ok_or_else(|| std::io::Error::other("journal not open"))?;
            for r in records {
                serde_json::to_writer(&mut *j, r)?;
                j.write_all(b"\n")?;
            }
            j.flush()
        })();
        if let Err(e) = result {
            tracing::error!(path = %self.path.display(), error = %e, "failed to append to the simulator journal");
        }
        self.records += records.len();
        let live = self.droplets.len() + self.revoked_tokens.len() + self.snapshots.len();
        if self.records > 4 * live + 10_000
            && let Err(e) = self.compact()
        {
            tracing::error!(path = %self.path.display(), error = %e, "failed to compact the simulator journal");
        }
    }

    /// Applies every transition that is due.
    pub fn advance(&mut self) {
        let now = now_ms();
        let due: Vec<u64> = self
            .due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect();
        let mut records = Vec::new();
        for id in due {
            let Some(mut d) = self.unindex(id) else {
                continue;
            };
            match d.pending.take() {
                Some(p) if p.remove => records.push(Record::Del(id)),
                Some(p) => {
                    d.status = p.status;
                    if let Some(size) = p.size {
                        d.size = size;
                    }
                    records.push(Record::Put(Box::new(d.clone())));
                    self.index(d);
                }
                None => self.index(d),
            }
        }
        if !records.is_empty() {
            self.log(&records);
        }
    }

    /// Droplets in ID order, optionally only those carrying `tag`.
    pub(crate) fn list(&self, tag: Option<&str>) -> Vec<&SimDroplet> {
        match tag {
            Some(t) => self
                .by_tag
                .get(t)
                .map(|ids| ids.iter().filter_map(|id| self.droplets.get(id)).collect())
                .unwrap_or_default(),
            None => self.droplets.values().collect(),
        }
    }

    /// The droplet with ID `id` (as in a URL).
    pub(crate) fn get(&self, id: &str) -> Option<&SimDroplet> {
        self.droplets.get(&id.parse().ok()?)
    }

    /// Creates a droplet with the next ID from `make`.
    pub(crate) fn create(&mut self, make: impl FnOnce(u64) -> SimDroplet) -> &SimDroplet {
        let id = self.next_id;
        self.next_id += 1;
        let d = make(id);
        self.log(&[
            Record::NextId(self.next_id),
            Record::Put(Box::new(d.clone())),
        ]);
        self.index(d);
        &self.droplets[&id]
    }

    /// Changes the droplet with ID `id` (as in a URL); `None` when there is none. `f` decides: its
    /// error is returned and nothing is written.
    pub(crate) fn update<T, E>(
        &mut self,
        id: &str,
        f: impl FnOnce(&mut SimDroplet) -> Result<T, E>,
    ) -> Option<Result<T, E>> {
        let id: u64 = id.parse().ok()?;
        let mut d = self.unindex(id)?;
        let before = d.clone();
        let out = f(&mut d);
        let d = if out.is_ok() { d } else { before };
        if out.is_ok() {
            self.log(&[Record::Put(Box::new(d.clone()))]);
        }
        self.index(d);
        Some(out)
    }

    /// Takes a snapshot of droplet `droplet_id`, listed once `ready_at_ms` has passed.
    pub(crate) fn snapshot(
        &mut self,
        droplet_id: u64,
        name: String,
        size_gb: f64,
        ready_at_ms: i64,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let snap = SimSnapshot {
            id,
            name,
            droplet_id,
            size_gb,
            created_at: jiff::Timestamp::now().to_string(),
            ready_at_ms,
            restores: 0,
        };
        self.log(&[Record::NextId(self.next_id), Record::Snap(snap.clone())]);
        self.snapshots.insert(id, snap);
        id
    }

    /// Every snapshot, taken or not, in ID order.
    pub(crate) fn snapshots(&self) -> impl Iterator<Item = &SimSnapshot> {
        self.snapshots.values()
    }

    /// Counts a restore from snapshot `id`.
    pub(crate) fn restored(&mut self, id: u64) {
        if let Some(snap) = self.snapshots.get_mut(&id) {
            snap.restores += 1;
            let record = Record::Snap(snap.clone());
            self.log(&[record]);
        }
    }

    /// Deletes snapshot `id` (as in a URL); false when there is none.
    pub(crate) fn delete_snapshot(&mut self, id: &str) -> bool {
        let Some(id) = id.parse::<u64>().ok() else {
            return false;
        };
        if self.snapshots.remove(&id).is_none() {
            return false;
        }
        self.log(&[Record::SnapDel(id)]);
        true
    }

    /// Whether `token` was revoked.
    pub(crate) fn is_revoked(&self, token: &str) -> bool {
        self.revoked_tokens.iter().any(|t| t == token)
    }

    /// Revokes `token`.
    pub(crate) fn revoke(&mut self, token: String) {
        if !self.is_revoked(&token) {
            self.revoked_tokens.push(token.clone());
            self.log(&[Record::Revoke(token)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn droplet(id: u64, tags: &[&str], pending: Option<Pending>) -> SimDroplet {
        SimDroplet {
            id,
            name: format!("d{id}"),
            status: "new".into(),
            size: "s-1vcpu-1gb".into(),
            region: "fra1".into(),
            image: "debian-12-x64".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ipv6: false,
            backups: false,
            created_at: "2026-11-22T00:00:00Z".into(),
            pending,
            vpc_uuid: None,
            monitoring: false,
            transfer_bytes: 0,
            firewalls: Vec::new(),
        }
    }

    #[test]
    fn changes_survive_a_reload_and_indexes_follow_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim.json");
        let mut s = Store::load(&path).unwrap();
        let due = Pending {
            at_ms: 0,
            status: "active".into(),
            ..Default::default()
        };
        let a = s.create(|id| droplet(id, &["t1"], Some(due.clone()))).id;
        let b = s.create(|id| droplet(id, &["t1", "t2"], None)).id;
        s.advance();
        assert_eq!(s.get(&a.to_string()).unwrap().status, "active");
        let r: Option<Result<(), ()>> = s.update(&b.to_string(), |d| {
            d.tags.retain(|t| t != "t1");
            Ok(())
        });
        assert!(r.is_some());
        let refused: Option<Result<(), &str>> = s.update(&a.to_string(), |d| {
            d.status = "off".into();
            Err("no")
        });
        assert_eq!(refused, Some(Err("no")));
        s.revoke("old".into());
        s.update(&a.to_string(), |d| {
            d.pending = Some(Pending {
                at_ms: 0,
                remove: true,
                ..Default::default()
            });
            Ok::<_, ()>(())
        });
        drop(s);

        let mut s = Store::load(&path).unwrap();
        assert_eq!(
            s.get(&a.to_string()).unwrap().status,
            "active",
            "a refused change is not written"
        );
        s.advance();
        assert!(
            s.get(&a.to_string()).is_none(),
            "the pending removal survived the restart"
        );
        assert_eq!(s.list(Some("t1")).len(), 0);
        assert_eq!(s.list(Some("t2")).len(), 1);
        assert!(s.is_revoked("old"));
        let c = s.create(|id| droplet(id, &[], None)).id;
        assert_eq!(c, b + 1, "IDs are never reused");
    }

    #[test]
    fn a_legacy_whole_state_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim.json");
        let legacy = serde_json::json!({"next_id": 7, "droplets": [droplet(6, &["x"], None)], "revoked_tokens": ["r"]});
        std::fs::write(&path, serde_json::to_vec_pretty(&legacy).unwrap()).unwrap();
        let s = Store::load(&path).unwrap();
        assert_eq!(s.list(Some("x")).len(), 1);
        assert!(s.is_revoked("r"));
        drop(s);
        let mut s = Store::load(&path).unwrap();
        assert_eq!(s.create(|id| droplet(id, &[], None)).id, 7);
    }
}
