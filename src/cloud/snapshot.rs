//! Server snapshots in Quartermaster's own terms: what a vendor reports of a snapshot, and what a lookup
//! after a crash or a lost answer found. The methods are on [`ComputeProvider`](super::ComputeProvider);
//! a vendor that cannot snapshot answers [`CloudError::Unsupported`](super::CloudError::Unsupported).

use rust_decimal::Decimal;

/// The prefix of the mark a snapshot carries (its name, label or description at the vendor):
/// `qm-snap-<uid of the VirtualMachineSnapshot>`. It is how a snapshot is found again and how its
/// ownership is proved: no other object's snapshot carries it.
pub const SNAPSHOT_MARK_PREFIX: &str = "qm-snap-";

/// The mark of the snapshot made for the object with `uid` (44 characters for a Kubernetes UID).
pub fn snapshot_mark(uid: &str) -> String {
    format!("{SNAPSHOT_MARK_PREFIX}{uid}")
}

/// Where a snapshot is in its life at the vendor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotState {
    /// Being taken.
    Pending,
    /// Taken: it can be restored.
    Available,
    /// The vendor gave up on it (its words).
    Failed(String),
}

/// A snapshot as the vendor reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The vendor's ID (what a restore names).
    pub id: String,
    /// Its name, label or description at the vendor (the mark).
    pub name: String,
    /// Its state.
    pub state: SnapshotState,
    /// Its size in GB, once the vendor reports one.
    pub size_gb: Option<Decimal>,
    /// When the vendor created it (RFC 3339), if reported.
    pub created_at: Option<String>,
}

/// What the vendor holds of a snapshot request, looked up by its mark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotLookup {
    /// The snapshot exists.
    Found(Snapshot),
    /// The vendor runs a snapshot of the server that it cannot name yet (DigitalOcean lists a droplet's
    /// snapshot only once it is taken): it may be this one, so nothing is requested until it ends.
    InProgress,
    /// Nothing: the request never reached the vendor (or was refused).
    Absent,
}

impl SnapshotLookup {
    /// The first of `items` that `carries` the mark, as a snapshot (`to`); else [`SnapshotLookup::Absent`].
    pub fn first<T>(
        items: impl IntoIterator<Item = T>,
        carries: impl Fn(&T) -> bool,
        to: impl FnOnce(T) -> Snapshot,
    ) -> Self {
        items
            .into_iter()
            .find(|i| carries(i))
            .map_or(Self::Absent, |i| Self::Found(to(i)))
    }
}
