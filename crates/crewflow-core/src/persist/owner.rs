//! Who drives a run: this process's lease-owner identity, the runs it drives now (those its
//! heartbeats renew), and whether another owner on this host is certainly dead.

use std::sync::Arc;

use crate::id::RunId;

/// The runs this process is driving right now (kicked off with a store, resumed, or taken
/// over by a worker, and not ended): the runs whose leases heartbeats renew.
pub fn driven_runs() -> Vec<RunId> {
    driven().iter().copied().collect()
}

fn driven() -> std::sync::MutexGuard<'static, std::collections::HashSet<RunId>> {
    static DRIVEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<RunId>>> = std::sync::OnceLock::new();
    DRIVEN.get_or_init(Default::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A run this process drives, listed in [`driven_runs`] until dropped (when the driver ends,
/// however it ends: finished, failed, or its future dropped).
pub(crate) struct Driving(RunId);

impl Driving {
    /// Starts driving `run_id`; `None` when this process drives it already.
    pub fn start(run_id: RunId) -> Option<Driving> {
        let inserted = driven().insert(run_id);
        // Built only when inserted: a `Driving` dropped here would unlist the other driver.
        inserted.then(|| Driving(run_id))
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        driven().remove(&self.0);
    }
}

/// The identity this process uses as a lease owner: `host:pid:tag`, where the tag is random.
pub fn process_owner() -> Arc<str> {
    static OWNER: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    OWNER
        .get_or_init(|| {
            let tag = uuid::Uuid::now_v7().simple().to_string();
            Arc::from(format!("{}:{}:{}", host_name(), std::process::id(), &tag[tag.len() - 8..]))
        })
        .clone()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && !h.contains(':'))
        .unwrap_or_else(|| "localhost".to_string())
}

/// Whether a lease owner is certainly dead: a process of this host (by [`process_owner`]'s
/// format) that no longer runs. Owners on other hosts, and processes whose state cannot be
/// read, are never declared dead: their leases are left to expire.
pub fn owner_is_dead(owner: &str) -> bool {
    let mut parts = owner.split(':');
    let (Some(host), Some(pid)) = (parts.next(), parts.next().and_then(|p| p.parse::<u32>().ok())) else {
        return false;
    };
    if host != host_name() || pid == std::process::id() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie (state Z) has exited; it only waits to be reaped.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound && std::path::Path::new("/proc/self").exists(),
    }
}
