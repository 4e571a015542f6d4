//! Helpers shared by the backends.

/// A graph fingerprint as stored: 16 hex digits (SQL integers are signed 64-bit).
pub(crate) fn fingerprint(f: u64) -> String {
    format!("{f:016x}")
}

/// Reads a stored fingerprint back (0, which matches no graph, if it is malformed).
pub(crate) fn parse_fingerprint(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or(0)
}

use crewflow_core::RunId;
use crewflow_core::persist::RunStatus;

use crate::StoreError;

/// A stored run id.
pub(crate) fn parse_run_id(id: &str) -> Result<RunId, StoreError> {
    id.parse().map_err(|_| StoreError::Corrupt(format!("run id `{id}`")))
}

/// A stored run status.
pub(crate) fn parse_status(status: &str) -> Result<RunStatus, StoreError> {
    RunStatus::parse(status).ok_or_else(|| StoreError::Corrupt(format!("run status `{status}`")))
}

/// Whether `me` may claim a run held by `holder` whose lease is `live`: it may, unless another
/// owner's lease still holds and that owner is not the dead one being `replacing`.
pub(crate) fn may_claim(holder: Option<&str>, live: bool, me: &str, replacing: Option<&str>) -> bool {
    match holder {
        Some(h) if live => h == me || replacing == Some(h),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::may_claim;

    #[test]
    fn claims_respect_live_leases_and_dead_owner_replacement() {
        assert!(may_claim(None, true, "me", None));
        assert!(may_claim(Some("other"), false, "me", None), "an expired lease");
        assert!(!may_claim(Some("other"), true, "me", None), "a live lease");
        assert!(may_claim(Some("me"), true, "me", None), "my own lease");
        assert!(may_claim(Some("dead"), true, "me", Some("dead")), "replacing a dead owner");
        assert!(!may_claim(Some("other"), true, "me", Some("dead")), "replacing only that owner");
    }
}
