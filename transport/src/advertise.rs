//! Which IP a swarm member tells others to dial.
//!
//! A peer that advertises loopback to a tracker on another host breaks the swarm silently: the
//! tracker hands `127.0.0.1` to every other host, which then dials itself. So the address is
//! chosen in this order, and loopback is refused whenever an upstream is not on loopback:
//! 1. the configured one (`peer_ip`);
//! 2. the address the P2P port is bound to, when it is a specific one;
//! 3. the local address of this host's route to its first upstream (the tracker): what the
//!    upstream will see, and so what peers on that network can reach (no packet is sent);
//! 4. loopback, for a cluster with no upstream off this host.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use kraken_config::cluster::HostList;

/// Why no address can be advertised.
#[derive(Debug, thiserror::Error)]
pub enum AdvertiseError {
    #[error(
        "this peer would advertise {advertised} to {upstream}, which is not on this host: other \
         hosts cannot reach a loopback address; set `peer_ip` to this host's routable address \
         (or bind `listen.p2p` to it)"
    )]
    LoopbackToRemote {
        advertised: IpAddr,
        upstream: SocketAddr,
    },
    #[error(
        "none of the upstreams {hosts} resolved within {patience:?}, so this peer cannot tell \
         which of its addresses they reach: check their DNS names, or set `peer_ip` (or bind \
         `listen.p2p` to this host's address)"
    )]
    Unresolved { hosts: String, patience: Duration },
}

/// The IP to advertise (see the module docs). `upstreams` are the resolved addresses of the
/// trackers this member announces to.
pub fn advertise_ip(
    requested: Option<IpAddr>,
    bound: IpAddr,
    upstreams: &[SocketAddr],
) -> Result<IpAddr, AdvertiseError> {
    choose(requested, bound, upstreams, route_source)
}

/// The upstream addresses to choose an advertised address by. When the choice depends on them
/// (no `peer_ip`, `listen.p2p` on an unspecified address) and `hosts` names any, waits up to
/// `patience` for one to resolve instead of taking "none resolved yet" (DNS of a cluster still
/// starting, a container name not registered yet) for "no upstream off this host", which would
/// advertise loopback to everyone.
pub async fn resolve_upstreams(
    requested: Option<IpAddr>,
    bound: IpAddr,
    hosts: &HostList,
    patience: Duration,
) -> Result<Vec<SocketAddr>, AdvertiseError> {
    let needed = requested.is_none() && bound.is_unspecified() && !hosts.is_empty();
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let addresses = resolve_hosts(hosts).await;
        if !addresses.is_empty() || !needed {
            return Ok(addresses);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AdvertiseError::Unresolved {
                hosts: hosts
                    .static_hosts
                    .iter()
                    .chain(hosts.dns.iter())
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
                patience,
            });
        }
        tracing::info!(
            ?hosts,
            "no upstream resolves yet; waiting to choose the advertised address"
        );
        tokio::time::sleep(RESOLVE_RETRY).await;
    }
}

/// How long a starting agent or origin waits for its upstreams' names to resolve when its
/// advertised address depends on them: a cluster starting all at once (compose, a fleet
/// rollout) registers names within seconds.
pub const ADVERTISE_PATIENCE: Duration = Duration::from_secs(60);

/// How often [`resolve_upstreams`] asks again.
const RESOLVE_RETRY: Duration = Duration::from_millis(500);

/// The addresses `hosts` name right now (a host that does not resolve is left out: the
/// client of that upstream reports it when it calls).
pub async fn resolve_hosts(hosts: &HostList) -> Vec<SocketAddr> {
    let mut addresses = Vec::new();
    for host in hosts.static_hosts.iter().chain(hosts.dns.iter()) {
        match tokio::net::lookup_host(host.as_str()).await {
            Ok(resolved) => addresses.extend(resolved),
            Err(error) => tracing::debug!(%host, %error, "host does not resolve yet"),
        }
    }
    addresses
}

/// The local address the kernel would send from to reach `destination`. Connecting a UDP
/// socket only looks up the route: nothing is sent.
pub fn route_source(destination: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = match destination {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(destination)?;
    Ok(socket.local_addr()?.ip())
}

fn choose(
    requested: Option<IpAddr>,
    bound: IpAddr,
    upstreams: &[SocketAddr],
    route: impl Fn(SocketAddr) -> io::Result<IpAddr>,
) -> Result<IpAddr, AdvertiseError> {
    let chosen = requested
        .or_else(|| (!bound.is_unspecified()).then_some(bound))
        .or_else(|| {
            upstreams
                .iter()
                .find_map(|upstream| match route(*upstream) {
                    Ok(ip) if !ip.is_unspecified() => Some(ip),
                    Ok(_) => None,
                    Err(error) => {
                        tracing::debug!(%upstream, %error, "no route to this upstream");
                        None
                    }
                })
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    if chosen.is_loopback()
        && let Some(upstream) = upstreams.iter().find(|u| !u.ip().is_loopback())
    {
        return Err(AdvertiseError::LoopbackToRemote {
            advertised: chosen,
            upstream: *upstream,
        });
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// A host at 10.0.0.7 (v4) and fd00::7 (v6) whose routes to anything else leave from there.
    fn lan_host(destination: SocketAddr) -> io::Result<IpAddr> {
        Ok(match destination.ip() {
            ip if ip.is_loopback() => ip,
            IpAddr::V4(_) => "10.0.0.7".parse().unwrap(),
            IpAddr::V6(_) => "fd00::7".parse().unwrap(),
        })
    }

    #[test]
    fn the_configured_address_then_the_bound_one_then_the_route_to_the_tracker() {
        let tracker = [addr("10.0.0.1:15003")];
        let any = ip("0.0.0.0");
        assert_eq!(
            choose(Some(ip("10.0.0.9")), any, &tracker, lan_host).unwrap(),
            ip("10.0.0.9")
        );
        assert_eq!(
            choose(None, ip("10.0.0.8"), &tracker, lan_host).unwrap(),
            ip("10.0.0.8")
        );
        assert_eq!(
            choose(None, any, &tracker, lan_host).unwrap(),
            ip("10.0.0.7")
        );
        let v6_tracker = [addr("[fd00::1]:15003")];
        assert_eq!(
            choose(None, ip("::"), &v6_tracker, lan_host).unwrap(),
            ip("fd00::7")
        );
    }

    #[test]
    fn loopback_is_fine_on_one_host_and_refused_towards_another() {
        let local = [addr("127.0.0.1:15003")];
        assert_eq!(
            choose(None, ip("0.0.0.0"), &local, lan_host).unwrap(),
            ip("127.0.0.1")
        );
        assert_eq!(
            choose(None, ip("0.0.0.0"), &[], lan_host).unwrap(),
            ip("127.0.0.1")
        );
        let remote = [addr("10.0.0.1:15003")];
        let error = choose(Some(ip("127.0.0.1")), ip("0.0.0.0"), &remote, lan_host).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("127.0.0.1") && message.contains("10.0.0.1:15003"),
            "{message}"
        );
        assert!(message.contains("peer_ip"), "says what to set: {message}");
        assert!(choose(None, ip("127.0.0.1"), &remote, lan_host).is_err());
    }

    #[test]
    fn the_route_to_a_loopback_tracker_leaves_from_loopback() {
        assert!(route_source(addr("127.0.0.1:9")).unwrap().is_loopback());
    }

    fn hosts(list: &[&str]) -> HostList {
        HostList {
            static_hosts: list.iter().map(|h| (*h).to_owned()).collect(),
            dns: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unresolved_upstream_is_waited_for_then_refused_not_taken_for_none() {
        // `.invalid` never resolves (RFC 6761): the choice needs it, so after the patience the
        // start fails naming the host and what to set, instead of advertising loopback.
        let unresolvable = hosts(&["tracker.invalid:15003"]);
        let patience = Duration::from_secs(5);
        let started = tokio::time::Instant::now();
        let error = resolve_upstreams(None, ip("0.0.0.0"), &unresolvable, patience)
            .await
            .unwrap_err();
        assert!(started.elapsed() >= patience, "it waited the patience out");
        let message = error.to_string();
        assert!(message.contains("tracker.invalid:15003"), "{message}");
        assert!(message.contains("peer_ip"), "{message}");
        // Not needed: a configured address or a specific bind decide without the upstreams.
        for (requested, bound) in [
            (Some(ip("10.0.0.9")), ip("0.0.0.0")),
            (None, ip("10.0.0.9")),
        ] {
            let resolved = resolve_upstreams(requested, bound, &unresolvable, patience)
                .await
                .unwrap();
            assert!(resolved.is_empty());
        }
        // No upstream configured: a single-host cluster, nothing to wait for.
        assert!(
            resolve_upstreams(None, ip("0.0.0.0"), &hosts(&[]), patience)
                .await
                .unwrap()
                .is_empty()
        );
        // A resolvable one answers at once.
        let resolved =
            resolve_upstreams(None, ip("0.0.0.0"), &hosts(&["127.0.0.1:15003"]), patience)
                .await
                .unwrap();
        assert_eq!(resolved, [addr("127.0.0.1:15003")]);
    }
}
