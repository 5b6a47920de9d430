//! The alarm table: NOSPACE and CORRUPT alarms raised by members.
//!
//! Alarms are replicated state, changed only by `Alarm` commands through
//! [`Store::apply`](crate::Store::apply) and stored in the meta column
//! family, so every member agrees on them and they survive restarts. While
//! an alarm is active the engine refuses the writes etcd 3.5 refuses:
//! NOSPACE refuses puts (and txns with a put), CORRUPT refuses every write.

use std::collections::BTreeSet;

use ballast_proto::ballastpb::command;
use ballast_proto::etcdserverpb::alarm_request::AlarmAction;
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::{AlarmMember, AlarmRequest, AlarmResponse, AlarmType, RequestOp};
use prost::Message;
use rocksdb::DB;

use crate::apply::{CommandResponse, Pending};
use crate::error::{Error, Result};
use crate::schema::{CF_META, META_ALARM_PREFIX};
use crate::store::Inner;

/// The active alarms, ordered by member ID then alarm type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AlarmTable {
    set: BTreeSet<(u64, i32)>,
}

impl AlarmTable {
    /// Loads the alarms stored in the meta column family.
    pub fn load(db: &DB) -> Result<AlarmTable> {
        let meta = db.cf_handle(CF_META).expect("meta cf");
        let mut set = BTreeSet::new();
        let iter = db.iterator_cf(
            meta,
            rocksdb::IteratorMode::From(META_ALARM_PREFIX, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(META_ALARM_PREFIX) {
                break;
            }
            let m = AlarmMember::decode(v.as_ref())
                .map_err(|e| Error::Corrupt(format!("stored alarm: {e}")))?;
            set.insert((m.member_id, m.alarm));
        }
        Ok(AlarmTable { set })
    }

    /// Every active alarm.
    pub fn members(&self) -> Vec<AlarmMember> {
        self.set
            .iter()
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    fn any(&self, t: AlarmType) -> bool {
        self.set.iter().any(|&(_, a)| a == t as i32)
    }

    /// The error an active alarm gives `op`, if it refuses it.
    pub fn refuses(&self, op: &command::Op) -> Option<Error> {
        let (writes, puts) = match op {
            command::Op::Put(_) => (true, true),
            command::Op::DeleteRange(_) => (true, false),
            command::Op::Compaction(_) => (true, false),
            command::Op::Txn(t) => (
                ops_match(&t.success, &is_write) || ops_match(&t.failure, &is_write),
                ops_match(&t.success, &is_put) || ops_match(&t.failure, &is_put),
            ),
            command::Op::Alarm(_) => (false, false),
            other => crate::lease::alarm_class(other).unwrap_or((false, false)),
        };
        if writes && self.any(AlarmType::Corrupt) {
            return Some(Error::CorruptAlarm);
        }
        if puts && self.any(AlarmType::Nospace) {
            return Some(Error::NoSpace);
        }
        None
    }
}

fn is_write(r: &Request) -> bool {
    matches!(r, Request::RequestPut(_) | Request::RequestDeleteRange(_))
}

fn is_put(r: &Request) -> bool {
    matches!(r, Request::RequestPut(_))
}

/// True if any operation, nested txns included (both branches), matches.
fn ops_match(ops: &[RequestOp], pred: &dyn Fn(&Request) -> bool) -> bool {
    ops.iter().any(|op| match &op.request {
        Some(Request::RequestTxn(t)) => ops_match(&t.success, pred) || ops_match(&t.failure, pred),
        Some(r) => pred(r),
        None => false,
    })
}

fn alarm_key(member_id: u64, alarm: i32) -> Vec<u8> {
    let mut k = META_ALARM_PREFIX.to_vec();
    k.extend_from_slice(&member_id.to_be_bytes());
    k.extend_from_slice(&alarm.to_be_bytes());
    k
}

/// Applies an alarm command to the writer's table, recording the change in
/// the batch. As etcd's `applierV3backend.Alarm`: GET lists the alarms of a
/// type (all for NONE); ACTIVATE returns the alarm (also if it was already
/// active; NONE and unknown types are ignored); DEACTIVATE returns the alarm
/// it cleared, nothing if it was not active.
pub(crate) fn apply(
    inner: &Inner,
    table: &mut AlarmTable,
    pending: &mut Pending,
    req: &AlarmRequest,
) -> CommandResponse {
    let mut alarms = Vec::new();
    let known = matches!(
        AlarmType::try_from(req.alarm),
        Ok(AlarmType::Nospace | AlarmType::Corrupt)
    );
    match AlarmAction::try_from(req.action) {
        Ok(AlarmAction::Get) => {
            alarms = table
                .members()
                .into_iter()
                .filter(|m| req.alarm == AlarmType::None as i32 || m.alarm == req.alarm)
                .collect();
        }
        Ok(AlarmAction::Activate) if known => {
            let m = AlarmMember {
                member_id: req.member_id,
                alarm: req.alarm,
            };
            if table.set.insert((m.member_id, m.alarm)) {
                pending.wb.put_cf(
                    inner.cf(CF_META),
                    alarm_key(m.member_id, m.alarm),
                    m.encode_to_vec(),
                );
            }
            alarms.push(m);
        }
        Ok(AlarmAction::Deactivate) if table.set.remove(&(req.member_id, req.alarm)) => {
            pending
                .wb
                .delete_cf(inner.cf(CF_META), alarm_key(req.member_id, req.alarm));
            alarms.push(AlarmMember {
                member_id: req.member_id,
                alarm: req.alarm,
            });
        }
        _ => {}
    }
    CommandResponse::Alarm(AlarmResponse {
        header: None,
        alarms,
    })
}

#[cfg(test)]
mod tests {
    use ballast_proto::ballastpb::Command;
    use ballast_proto::etcdserverpb::{
        CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest,
    };

    use super::*;
    use crate::{Store, StoreOptions};

    fn alarm(action: AlarmAction, member_id: u64, t: AlarmType) -> Command {
        Command {
            op: Some(command::Op::Alarm(AlarmRequest {
                action: action as i32,
                member_id,
                alarm: t as i32,
            })),
        }
    }

    fn put(k: &str) -> Command {
        Command {
            op: Some(command::Op::Put(PutRequest {
                key: k.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>) -> Command {
        Command {
            op: Some(command::Op::Txn(TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            })),
        }
    }

    fn op(r: Request) -> RequestOp {
        RequestOp { request: Some(r) }
    }

    fn alarms_of(r: &Result<CommandResponse>) -> Vec<AlarmMember> {
        match r {
            Ok(CommandResponse::Alarm(a)) => a.alarms.clone(),
            other => panic!("not an alarm response: {other:?}"),
        }
    }

    #[test]
    fn nospace_refuses_puts_until_disarmed_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let mut index = 0;
        let mut apply = |store: &Store, cmds: Vec<Command>| {
            let entries: Vec<(u64, Command)> = cmds
                .into_iter()
                .map(|c| {
                    index += 1;
                    (index, c)
                })
                .collect();
            store.apply(&entries).unwrap()
        };
        let out = apply(&store, vec![put("a"), put("b")]);
        assert!(out.iter().all(|r| r.is_ok()));

        // Activation, then a put in the same batch is already refused.
        let out = apply(
            &store,
            vec![
                alarm(AlarmAction::Activate, 7, AlarmType::Nospace),
                put("c"),
                alarm(AlarmAction::Activate, 7, AlarmType::Nospace),
            ],
        );
        let raised = AlarmMember {
            member_id: 7,
            alarm: AlarmType::Nospace as i32,
        };
        assert_eq!(alarms_of(&out[0]), vec![raised]);
        assert_eq!(out[1], Err(Error::NoSpace));
        // Raising it again answers the alarm, as etcd does.
        assert_eq!(alarms_of(&out[2]), vec![raised]);
        assert_eq!(store.alarms(), vec![raised]);
        let rev = store.current_revision();

        // Reads, deletes, compactions and put-free txns still work; a txn
        // with a put anywhere (even nested, even in the failure branch) not.
        let del = Command {
            op: Some(command::Op::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })),
        };
        let read_txn = txn(vec![op(Request::RequestRange(RangeRequest {
            key: b"b".to_vec(),
            ..Default::default()
        }))]);
        let nested_put = txn(vec![op(Request::RequestTxn(TxnRequest {
            compare: vec![],
            success: vec![],
            failure: vec![op(Request::RequestPut(PutRequest {
                key: b"x".to_vec(),
                ..Default::default()
            }))],
        }))]);
        let compact = Command {
            op: Some(command::Op::Compaction(CompactionRequest {
                revision: rev,
                physical: false,
            })),
        };
        let out = apply(&store, vec![del, read_txn, nested_put, compact]);
        assert!(out[0].is_ok(), "{:?}", out[0]);
        assert!(out[1].is_ok(), "{:?}", out[1]);
        assert_eq!(out[2], Err(Error::NoSpace));
        assert!(out[3].is_ok(), "{:?}", out[3]);

        // The alarm is stored: it is there after a restart.
        drop(store);
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.alarms(), vec![raised]);
        let out = apply(&store, vec![put("d")]);
        assert_eq!(out[0], Err(Error::NoSpace));

        // GET filters by type; deactivating an alarm that is not active
        // answers nothing; the right one clears it.
        let out = apply(
            &store,
            vec![
                alarm(AlarmAction::Get, 0, AlarmType::Corrupt),
                alarm(AlarmAction::Get, 0, AlarmType::None),
                alarm(AlarmAction::Deactivate, 8, AlarmType::Nospace),
                alarm(AlarmAction::Deactivate, 7, AlarmType::Nospace),
                put("d"),
            ],
        );
        assert_eq!(alarms_of(&out[0]), vec![]);
        assert_eq!(alarms_of(&out[1]), vec![raised]);
        assert_eq!(alarms_of(&out[2]), vec![]);
        assert_eq!(alarms_of(&out[3]), vec![raised]);
        assert!(out[4].is_ok());
        assert!(store.alarms().is_empty());
        drop(store);
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(store.alarms().is_empty());
    }

    #[test]
    fn corrupt_refuses_every_write_but_not_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let del = Command {
            op: Some(command::Op::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })),
        };
        let read_txn = txn(vec![op(Request::RequestRange(RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        }))]);
        let base = store.current_revision();
        let out = store
            .apply(&[
                (1, put("a")),
                (2, alarm(AlarmAction::Activate, 1, AlarmType::Corrupt)),
                // NONE is not an alarm one can raise.
                (3, alarm(AlarmAction::Activate, 1, AlarmType::None)),
                (4, put("b")),
                (5, del),
                (6, read_txn),
            ])
            .unwrap();
        assert_eq!(alarms_of(&out[2]), vec![]);
        assert_eq!(out[3], Err(Error::CorruptAlarm));
        assert_eq!(out[4], Err(Error::CorruptAlarm));
        assert!(out[5].is_ok());
        assert_eq!(store.current_revision(), base + 1);
        let got = store
            .range(&RangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(got.kvs.len(), 1);
        assert_eq!(store.applied_index(), 6);
    }
}
