//! The etcd v3 wire protocol for Ballast.
//!
//! The modules mirror etcd 3.5's protobuf packages: [`etcdserverpb`] (the
//! KV, Watch, Lease, Cluster, Maintenance and Auth services), [`mvccpb`] (the
//! storage data model) and [`authpb`]. Package, service, message and field
//! names and numbers are etcd's, so any etcd v3 client talks to a Ballast
//! member unchanged. [`ballastpb`] holds Ballast's internal command format:
//! what a member proposes and the MVCC engine applies.
#![allow(missing_docs)]

/// etcd's storage data model: `KeyValue` and watch `Event`.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's auth data model.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd's v3 gRPC services and their messages.
#[allow(clippy::large_enum_variant)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// Ballast's internal command format (not part of the etcd API).
pub mod ballastpb {
    tonic::include_proto!("ballastpb");
}
