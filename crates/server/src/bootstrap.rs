//! Who the members of a new cluster are: parsing `--initial-cluster` and
//! deriving member and cluster IDs exactly as etcd does.

use std::collections::BTreeMap;

use ballast_raft::{MemberNode, NodeId};

use crate::identity::{cluster_id, member_id};

/// The founding members of a cluster, as `--initial-cluster` lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPlan {
    /// This member's ID.
    pub member_id: NodeId,
    /// The cluster's ID.
    pub cluster_id: u64,
    /// Every founding member with its name and peer URLs.
    pub members: BTreeMap<NodeId, MemberNode>,
}

/// Parses `name=url,name=url,...`; a name may repeat to give a member
/// several peer URLs. Returns (name, sorted URLs) in first-seen order.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, url) = item
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster: {item:?} is not of the form name=url"))?;
        if name.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "--initial-cluster: {item:?} is not of the form name=http://host:port"
            ));
        }
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => out.push((name.to_string(), vec![url.to_string()])),
        }
    }
    if out.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    for (_, urls) in &mut out {
        urls.sort();
    }
    Ok(out)
}

/// Plans a new cluster: checks that this member (`name`, advertising
/// `peer_urls`) is in `initial_cluster`, and derives every ID from the
/// peer URLs and `token`.
pub fn plan_new_cluster(
    name: &str,
    peer_urls: &[String],
    initial_cluster: &str,
    token: &str,
) -> Result<ClusterPlan, String> {
    let members = parse_initial_cluster(initial_cluster)?;
    let Some((_, own)) = members.iter().find(|(n, _)| n == name) else {
        return Err(format!(
            "couldn't find local name {name:?} in the initial cluster configuration ({initial_cluster})"
        ));
    };
    let mut advertised = peer_urls.to_vec();
    advertised.sort();
    if *own != advertised {
        return Err(format!(
            "--initial-cluster has {name}={} but --initial-advertise-peer-urls is {}",
            own.join(","),
            advertised.join(",")
        ));
    }
    let mut by_id = BTreeMap::new();
    for (n, urls) in &members {
        let id = member_id(urls, token);
        let node = MemberNode {
            name: n.clone(),
            peer_urls: urls.clone(),
            client_urls: Vec::new(),
        };
        if by_id.insert(id, node).is_some() {
            return Err(format!(
                "--initial-cluster: two members share the peer URLs {}",
                urls.join(",")
            ));
        }
    }
    let ids: Vec<NodeId> = by_id.keys().copied().collect();
    Ok(ClusterPlan {
        member_id: member_id(&advertised, token),
        cluster_id: cluster_id(&ids),
        members: by_id,
    })
}

/// The ID etcd gives a member added at run time (`MemberAdd`): from its
/// peer URLs and the time of the request.
pub fn added_member_id(peer_urls: &[String], unix_secs: u64) -> NodeId {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = sha1_smol::Sha1::new();
    h.update(urls.concat().as_bytes());
    h.update(unix_secs.to_string().as_bytes());
    u64::from_be_bytes(h.digest().bytes()[..8].try_into().expect("20 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_etcd() {
        let ic = "n1=http://127.0.0.1:2380,n2=http://127.0.0.1:22380,n3=http://127.0.0.1:32380";
        let p = plan_new_cluster("n2", &["http://127.0.0.1:22380".into()], ic, "tok").unwrap();
        assert_eq!(p.members.len(), 3);
        assert_eq!(
            p.member_id,
            member_id(&["http://127.0.0.1:22380".into()], "tok")
        );
        assert_eq!(p.members[&p.member_id].name, "n2");
        // Every member derives the same cluster ID.
        let p1 = plan_new_cluster("n1", &["http://127.0.0.1:2380".into()], ic, "tok").unwrap();
        assert_eq!(p1.cluster_id, p.cluster_id);
        // Another token is another cluster.
        let other = plan_new_cluster("n1", &["http://127.0.0.1:2380".into()], ic, "x").unwrap();
        assert_ne!(other.cluster_id, p.cluster_id);
        assert!(
            plan_new_cluster("n4", &["http://127.0.0.1:2380".into()], ic, "tok")
                .unwrap_err()
                .contains("couldn't find local name")
        );
        assert!(
            plan_new_cluster("n1", &["http://127.0.0.1:9".into()], ic, "tok")
                .unwrap_err()
                .contains("--initial-advertise-peer-urls")
        );
        assert!(parse_initial_cluster("n1").is_err());
        assert!(parse_initial_cluster("n1=ftp://x").is_err());
        // etcd's default single member.
        let d = plan_new_cluster(
            "default",
            &["http://localhost:2380".into()],
            "default=http://localhost:2380",
            "etcd-cluster",
        )
        .unwrap();
        assert_eq!(format!("{:x}", d.member_id), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", d.cluster_id), "cdf818194e3a8c32");
    }
}
