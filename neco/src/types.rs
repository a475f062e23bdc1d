//! The values stored in etcd, byte-compatible with neco's JSON (reference/neco-cd.md §4).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use time::OffsetDateTime;

/// A boot server's logical rack number.
pub type Lrn = u32;

/// `status/current`: what every worker must install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    pub version: String,
    /// Numerically sorted (also when read: neco (Go) writes the list in etcd's key order,
    /// `[0,1,10,2]`). neco may write `null` for an empty list.
    #[serde(deserialize_with = "null_as_empty")]
    pub servers: Vec<Lrn>,
    pub stop: bool,
    /// RFC 3339 with any offset on input; written in UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
}

/// `notice/pending`: a begin or failure notification that the updater leader owes, written in
/// the same transaction as the request it is about (see [`crate::storage::keys::PENDING_NOTICE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingNotice {
    pub event: NoticeEvent,
    /// The begin notice's detail, or the failure's reason.
    pub text: String,
    /// The request as it was when the event happened.
    pub request: UpdateRequest,
}

/// Which notice is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeEvent {
    Begin,
    Failed,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Lrn>, D::Error> {
    let mut servers = Option::<Vec<Lrn>>::deserialize(d)?.unwrap_or_default();
    servers.sort_unstable();
    Ok(servers)
}

impl UpdateRequest {
    pub fn is_member(&self, lrn: Lrn) -> bool {
        self.servers.contains(&lrn)
    }
}

/// The condition of a worker's update, stored as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpdateCondition {
    NotRunning,
    Running,
    Aborted,
    Completed,
    /// A value neco does not define; kept so that it is reported, not lost.
    Unknown(i64),
}

impl UpdateCondition {
    pub fn code(self) -> i64 {
        match self {
            Self::NotRunning => 0,
            Self::Running => 1,
            Self::Aborted => 2,
            Self::Completed => 3,
            Self::Unknown(n) => n,
        }
    }

    pub fn from_code(code: i64) -> Self {
        match code {
            0 => Self::NotRunning,
            1 => Self::Running,
            2 => Self::Aborted,
            3 => Self::Completed,
            n => Self::Unknown(n),
        }
    }
}

impl fmt::Display for UpdateCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotRunning => "not running",
            Self::Running => "running",
            Self::Aborted => "aborted",
            Self::Completed => "completed",
            Self::Unknown(_) => "unknown",
        })
    }
}

impl Serialize for UpdateCondition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.code())
    }
}

impl<'de> Deserialize<'de> for UpdateCondition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        i64::deserialize(d).map(Self::from_code)
    }
}

/// `status/bootservers/<LRN>`: a worker's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub version: String,
    pub step: u32,
    pub cond: UpdateCondition,
    /// Always present; empty when there is nothing to say.
    #[serde(default)]
    pub message: String,
}

/// `contents/<target>`: the last upload of contents to a target such as sabakan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentsStatus {
    pub version: String,
    pub success: bool,
}

/// True when every server of `lrns` reports `version` completed (true for no servers).
pub fn update_completed(
    version: &str,
    lrns: &[Lrn],
    statuses: &BTreeMap<Lrn, UpdateStatus>,
) -> bool {
    lrns.iter().all(|lrn| {
        statuses
            .get(lrn)
            .is_some_and(|st| st.version == version && st.cond == UpdateCondition::Completed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_as_neco_writes_it() {
        let text = r#"{"version":"2025.03.04-12345","servers":[0,1,2],"stop":false,"started_at":"2025-03-04T01:02:03.4Z"}"#;
        let req: UpdateRequest = serde_json::from_str(text).unwrap();
        assert_eq!(req.servers, vec![0, 1, 2]);
        assert!(req.is_member(2) && !req.is_member(3));
        let back = serde_json::to_string(&req).unwrap();
        assert_eq!(
            back,
            r#"{"version":"2025.03.04-12345","servers":[0,1,2],"stop":false,"started_at":"2025-03-04T01:02:03.4Z"}"#
        );
        // Local offsets (neco setup) and null server lists are accepted.
        let local = r#"{"version":"1","servers":null,"stop":true,"started_at":"2019-01-30T10:00:00.123456789+09:00"}"#;
        let req: UpdateRequest = serde_json::from_str(local).unwrap();
        assert!(req.servers.is_empty());
        assert_eq!(req.started_at.offset().whole_hours(), 9);
        let zero =
            r#"{"version":"1","servers":[],"stop":false,"started_at":"0001-01-01T00:00:00Z"}"#;
        assert!(serde_json::from_str::<UpdateRequest>(zero).is_ok());
        // neco's updater writes the servers in etcd's key order.
        let go = r#"{"version":"1","servers":[0,1,10,2],"stop":false,"started_at":"0001-01-01T00:00:00Z"}"#;
        let req: UpdateRequest = serde_json::from_str(go).unwrap();
        assert_eq!(req.servers, vec![0, 1, 2, 10]);
    }

    #[test]
    fn status_json_round_trip() {
        let text = r#"{"version":"2025.03.04-12345","step":5,"cond":1,"message":""}"#;
        let st: UpdateStatus = serde_json::from_str(text).unwrap();
        assert_eq!(st.cond, UpdateCondition::Running);
        assert_eq!(serde_json::to_string(&st).unwrap(), text);
        let odd: UpdateStatus =
            serde_json::from_str(r#"{"version":"1","step":1,"cond":7,"message":"x"}"#).unwrap();
        assert_eq!(odd.cond, UpdateCondition::Unknown(7));
        assert_eq!(odd.cond.to_string(), "unknown");
        assert!(serde_json::from_str::<UpdateStatus>(r#"{"version":"1","step":1}"#).is_err());
    }

    #[test]
    fn completion() {
        let st = |v: &str, cond| UpdateStatus {
            version: v.into(),
            step: 3,
            cond,
            message: String::new(),
        };
        let mut statuses = BTreeMap::new();
        assert!(update_completed("1", &[], &statuses));
        statuses.insert(0, st("1", UpdateCondition::Completed));
        statuses.insert(1, st("0", UpdateCondition::Completed));
        assert!(update_completed("1", &[0], &statuses));
        assert!(!update_completed("1", &[0, 1], &statuses));
        assert!(!update_completed("1", &[0, 2], &statuses));
        statuses.insert(1, st("1", UpdateCondition::Running));
        assert!(!update_completed("1", &[0, 1], &statuses));
    }
}
