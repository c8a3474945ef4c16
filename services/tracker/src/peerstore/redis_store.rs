//! The Redis peer store, shared by several trackers.
//!
//! Announces go into time-window sets, as in Kraken: the key `peerset:<digest hex>:<window
//! start in unix ms>` holds members `<peer id hex>:<ip>:<port>:<0|1>` for every announce made
//! during that window, and expires after `window × max_windows`. Reads look only at the
//! current and the `max_windows - 1` previous windows, so an announce is forgotten between
//! `window × (max_windows - 1)` and `window × max_windows` after it was made, without a
//! per-member TTL (which Redis sets lack) and without any cleanup job.
//!
//! Caps need peers rather than members (a peer that completes has two members), so each
//! window also has `peerids:<digest hex>:<window start>`, the set of peer ids that announced in
//! it, and `peeraddrs:<digest hex>:<window start>`, a hash from IP to how many of those ids
//! announced from it. A peer id absent from every live window's id set is new, and is refused
//! when the current window already holds `per_blob` ids or `per_address` ids at its IP. The
//! check and the writes are one Lua script, so trackers sharing the server cannot overshoot.
//!
//! Reports from other peers live in per-window keys too: `peerips:<digest hex>:<window start>`
//! maps each peer id that announced in the window to its IP (so that a report can tell whether
//! the reporter shares the reported peer's host), `peerproven:<digest hex>:<window start>` is
//! the set of peer ids another host said served it, and `peerdemoted:<digest hex>:<window
//! start>` the set of peer ids another host said failed it. A peer is proven or demoted if any
//! live window's set holds it; each announce of a proven peer copies the proof into the
//! current window, so it lives as long as the peer keeps announcing, while a demotion lapses
//! with the window it was made in (renewed by each new failure report). Reports are one Lua
//! script reading at most [`MAX_REPORTED_PEERS`] ids of each list.
//!
//! `peerowner:<peer id hex>` holds the hex SHA-256 of the certificate that announced that peer
//! id, with the lifetime of an announce, restarted by each of its announces.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, UNIX_EPOCH};

use kraken_config::tracker::RedisPeerStoreConfig;
use kraken_core::{Digest, PeerId};
use rand::seq::SliceRandom;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use super::{
    CapExceeded, CertIdentity, MAX_REPORTED_PEERS, PeerEntry, PeerLimits, PeerReport, PeerStore,
    PeerStoreError, ReportOutcome,
};

/// Records an announce under the caps; see the module documentation. KEYS: the current
/// window's member set, id set, address hash, IP hash and proven set, then the id set and the
/// proven set of each earlier live window. ARGV: member, peer id, IP, TTL in ms, per-blob cap,
/// per-address cap. Returns 0 (recorded), 1 (blob full) or 2 (address full).
static ANNOUNCE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local known = redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1
local proven = redis.call('SISMEMBER', KEYS[5], ARGV[2]) == 1
for i = 6, #KEYS - 1, 2 do
  if not known and redis.call('SISMEMBER', KEYS[i], ARGV[2]) == 1 then
    known = true
  end
  if not proven and redis.call('SISMEMBER', KEYS[i + 1], ARGV[2]) == 1 then
    proven = true
  end
end
if not known then
  if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[5]) then
    return 1
  end
  if tonumber(redis.call('HGET', KEYS[3], ARGV[3]) or '0') >= tonumber(ARGV[6]) then
    return 2
  end
end
if redis.call('SADD', KEYS[2], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
if proven then
  -- Carried into the current window so that the proof lives as long as the peer announces.
  redis.call('SADD', KEYS[5], ARGV[2])
  redis.call('PEXPIRE', KEYS[5], ARGV[4])
end
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], ARGV[4])
end
return 0
",
    )
});

/// Applies one announcer's reports; see the module documentation. KEYS: for each live window,
/// current first, its IP hash, proven set and demoted set. ARGV: the reporter's IP, TTL in ms,
/// how many served ids follow, the served ids, then the failed ids. Returns {newly proven,
/// newly demoted}.
static REPORT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local windows = math.floor(#KEYS / 3)
local function ip_of(id)
  for w = 0, windows - 1 do
    local ip = redis.call('HGET', KEYS[w * 3 + 1], id)
    if ip then
      return ip
    end
  end
  return false
end
local function held(offset, id)
  for w = 0, windows - 1 do
    if redis.call('SISMEMBER', KEYS[w * 3 + offset], id) == 1 then
      return true
    end
  end
  return false
end
local reporter, ttl, served = ARGV[1], ARGV[2], tonumber(ARGV[3])
local proven, demoted = 0, 0
for i = 4, 3 + served do
  local ip = ip_of(ARGV[i])
  if ip and ip ~= reporter and not held(3, ARGV[i]) and not held(2, ARGV[i]) then
    redis.call('SADD', KEYS[2], ARGV[i])
    redis.call('PEXPIRE', KEYS[2], ttl)
    proven = proven + 1
  end
end
for i = 4 + served, #ARGV do
  local ip = ip_of(ARGV[i])
  if ip and ip ~= reporter then
    if not held(3, ARGV[i]) then
      demoted = demoted + 1
    end
    for w = 0, windows - 1 do
      redis.call('SREM', KEYS[w * 3 + 2], ARGV[i])
    end
    redis.call('SADD', KEYS[3], ARGV[i])
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
end
return {proven, demoted}
",
    )
});

/// Binds a peer id to a certificate unless another one holds it, restarting the TTL when it
/// is ours. KEYS: the binding. ARGV: identity, TTL in ms. Returns 1 (ours) or 0 (another's).
/// A script rather than `SET NX` and a compare, so that the refresh cannot extend a binding
/// another tracker just replaced.
static BIND: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
",
    )
});

// Wall-clock time for the window computation, injected so that tests can roll windows over
// without sleeping. Trackers sharing a Redis must agree on it to within a small fraction of a
// window (NTP is plenty for windows of minutes).
pub use kraken_core::clock::{Clock, SystemClock};

/// Announces in Redis time-window sets; see the module documentation.
#[derive(Clone)]
pub struct RedisPeerStore {
    addr: String,
    connection: ConnectionManager,
    window_ms: u64,
    max_windows: u64,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for RedisPeerStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPeerStore")
            .field("addr", &self.addr)
            .field("window_ms", &self.window_ms)
            .field("max_windows", &self.max_windows)
            .finish_non_exhaustive()
    }
}

impl RedisPeerStore {
    /// Connects to the server in `config` (authenticating with its password, if any).
    pub async fn connect(config: &RedisPeerStoreConfig) -> Result<Self, PeerStoreError> {
        Self::connect_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`RedisPeerStore::connect`] with windows computed from `clock`.
    pub async fn connect_with_clock(
        config: &RedisPeerStoreConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, PeerStoreError> {
        let addr = config.addr.clone();
        let (host, port) = split_host_port(&addr)
            .ok_or_else(|| PeerStoreError::RedisAddress { addr: addr.clone() })?;
        let mut settings = RedisConnectionInfo::default();
        if let Some(password) = config.password().map_err(PeerStoreError::Password)? {
            settings = settings.set_password(password.expose());
        }
        let connect_error = |source| PeerStoreError::RedisConnect {
            addr: addr.clone(),
            source,
        };
        let info = ConnectionAddr::Tcp(host, port)
            .into_connection_info()
            .map_err(connect_error)?
            .set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(connect_error)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.dial_timeout))
            // A stuck Redis must not hold announces for longer than a dial would take.
            .set_response_timeout(Some(config.dial_timeout))
            // Reconnects happen in the background while calls fail fast with an error; a long
            // retry ladder would only delay reporting that Redis is down.
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let mut connection = ConnectionManager::new_with_config(client, manager_config)
            .await
            .map_err(connect_error)?;
        // Connecting does not run a command, so a missing or wrong password would only
        // surface at the first announce; one round trip makes it a start-up error.
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await
            .map_err(connect_error)?;
        let window_ms = u64::try_from(config.peer_set_window_size.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Ok(Self {
            addr,
            connection,
            window_ms,
            max_windows: u64::from(config.max_peer_set_windows.max(1)),
            clock,
        })
    }

    fn current_window(&self) -> u64 {
        let now_ms = self
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        now_ms / self.window_ms
    }

    fn key(&self, digest: &Digest, window: u64) -> String {
        self.window_key("peerset", digest, window)
    }

    fn window_key(&self, kind: &str, digest: &Digest, window: u64) -> String {
        format!(
            "{kind}:{}:{}",
            digest.hex(),
            window.saturating_mul(self.window_ms)
        )
    }

    /// How long a window's keys, and a peer-id binding, live.
    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.window_ms.saturating_mul(self.max_windows)).unwrap_or(i64::MAX)
    }

    fn redis_error(&self, source: redis::RedisError) -> PeerStoreError {
        metrics::counter!(crate::metrics::REDIS_ERRORS).increment(1);
        PeerStoreError::Redis {
            addr: self.addr.clone(),
            source,
        }
    }
}

#[async_trait::async_trait]
impl PeerStore for RedisPeerStore {
    async fn update(
        &self,
        digest: &Digest,
        peer: &PeerEntry,
        limits: PeerLimits,
    ) -> Result<(), PeerStoreError> {
        let current = self.current_window();
        let mut invocation = ANNOUNCE.prepare_invoke();
        invocation
            .key(self.key(digest, current))
            .key(self.window_key("peerids", digest, current))
            .key(self.window_key("peeraddrs", digest, current))
            .key(self.window_key("peerips", digest, current))
            .key(self.window_key("peerproven", digest, current));
        for back in 1..self.max_windows {
            if let Some(window) = current.checked_sub(back) {
                invocation
                    .key(self.window_key("peerids", digest, window))
                    .key(self.window_key("peerproven", digest, window));
            }
        }
        invocation
            .arg(encode_member(peer))
            .arg(peer.peer_id.to_string())
            .arg(peer.addr.ip().to_string())
            .arg(self.ttl_ms())
            // Saturated: Lua numbers are doubles, and a cap beyond 2^53 is no cap anyway.
            .arg(u64::try_from(limits.per_blob).unwrap_or(u64::MAX))
            .arg(u64::try_from(limits.per_address).unwrap_or(u64::MAX));
        let mut connection = self.connection.clone();
        let outcome: i64 = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| self.redis_error(e))?;
        match outcome {
            1 => Err(CapExceeded::Blob {
                limit: limits.per_blob,
            }
            .into()),
            2 => Err(CapExceeded::Address {
                ip: peer.addr.ip(),
                limit: limits.per_address,
            }
            .into()),
            _ => Ok(()),
        }
    }

    async fn get_peers(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> Result<Vec<PeerEntry>, PeerStoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let current = self.current_window();
        let mut windows: Vec<u64> = (0..self.max_windows)
            .filter_map(|back| current.checked_sub(back))
            .collect();
        // Shuffled so that no window (in particular the current, still filling one) is always
        // the one that fills the sample.
        windows.shuffle(&mut rand::rng());
        let count = isize::try_from(limit).unwrap_or(isize::MAX);
        let mut pipe = redis::pipe();
        for window in &windows {
            pipe.srandmember_multiple(self.key(digest, *window), count);
        }
        let mut connection = self.connection.clone();
        let replies: Vec<Vec<String>> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| self.redis_error(e))?;

        let mut order: Vec<PeerId> = Vec::new();
        let mut peers: HashMap<PeerId, PeerEntry> = HashMap::new();
        for member in replies.iter().flatten() {
            let Some(entry) = decode_member(member) else {
                tracing::debug!(member, "skipping malformed peer-store member");
                continue;
            };
            if let Some(known) = peers.get_mut(&entry.peer_id) {
                // Several windows (or both flags within one) may hold the peer: it is complete
                // if any announce said so.
                known.complete |= entry.complete;
            } else if order.len() < limit {
                order.push(entry.peer_id);
                peers.insert(entry.peer_id, entry);
            }
        }
        let mut result: Vec<PeerEntry> = order.iter().filter_map(|id| peers.remove(id)).collect();
        if !result.is_empty() {
            self.add_standing(digest, &windows, &mut result).await?;
        }
        result.shuffle(&mut rand::rng());
        Ok(result)
    }

    async fn report(
        &self,
        digest: &Digest,
        report: &PeerReport<'_>,
    ) -> Result<ReportOutcome, PeerStoreError> {
        let served: Vec<String> = report
            .served_by
            .iter()
            .take(MAX_REPORTED_PEERS)
            .map(PeerId::to_string)
            .collect();
        let failed: Vec<String> = report
            .failed
            .iter()
            .take(MAX_REPORTED_PEERS)
            .map(PeerId::to_string)
            .collect();
        if served.is_empty() && failed.is_empty() {
            return Ok(ReportOutcome::default());
        }
        let current = self.current_window();
        let mut invocation = REPORT.prepare_invoke();
        for back in 0..self.max_windows {
            if let Some(window) = current.checked_sub(back) {
                invocation
                    .key(self.window_key("peerips", digest, window))
                    .key(self.window_key("peerproven", digest, window))
                    .key(self.window_key("peerdemoted", digest, window));
            }
        }
        invocation
            .arg(report.reporter_ip.to_string())
            .arg(self.ttl_ms())
            .arg(served.len())
            .arg(served)
            .arg(failed);
        let mut connection = self.connection.clone();
        let (proven, demoted): (i64, i64) = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(ReportOutcome {
            proven: usize::try_from(proven).unwrap_or(0),
            demoted: usize::try_from(demoted).unwrap_or(0),
        })
    }

    async fn bind_identity(
        &self,
        peer_id: &PeerId,
        identity: &CertIdentity,
    ) -> Result<bool, PeerStoreError> {
        let mut connection = self.connection.clone();
        let bound: i64 = BIND
            .key(format!("peerowner:{peer_id}"))
            .arg(identity.hex())
            .arg(self.ttl_ms())
            .invoke_async(&mut connection)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(bound == 1)
    }
}

impl RedisPeerStore {
    /// Marks the sampled `peers` proven or demoted from the `windows`' report sets, in one
    /// pipeline of two `SMISMEMBER`s per window (bounded by the sample, not the swarm).
    async fn add_standing(
        &self,
        digest: &Digest,
        windows: &[u64],
        peers: &mut [PeerEntry],
    ) -> Result<(), PeerStoreError> {
        let ids: Vec<String> = peers.iter().map(|p| p.peer_id.to_string()).collect();
        let mut pipe = redis::pipe();
        for window in windows {
            for kind in ["peerproven", "peerdemoted"] {
                pipe.cmd("SMISMEMBER")
                    .arg(self.window_key(kind, digest, *window))
                    .arg(&ids);
            }
        }
        let mut connection = self.connection.clone();
        let replies: Vec<Vec<bool>> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| self.redis_error(e))?;
        for pair in replies.chunks(2) {
            let [proven, demoted] = pair else { continue };
            for (index, peer) in peers.iter_mut().enumerate() {
                peer.proven |= proven.get(index).copied().unwrap_or(false);
                peer.demoted |= demoted.get(index).copied().unwrap_or(false);
            }
        }
        // A demotion outranks a proof made in another window (the report script clears the
        // proof, but a window read here may predate that).
        for peer in peers.iter_mut() {
            peer.proven &= !peer.demoted;
        }
        Ok(())
    }
}

fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

/// `<peer id hex>:<ip>:<port>:<0|1>`. IPv6 addresses contain colons, so decoding takes the
/// peer id from the front and the flag and port from the back.
fn encode_member(peer: &PeerEntry) -> String {
    format!(
        "{}:{}:{}:{}",
        peer.peer_id,
        peer.addr.ip(),
        peer.addr.port(),
        u8::from(peer.complete)
    )
}

fn decode_member(member: &str) -> Option<PeerEntry> {
    let (peer_id, rest) = member.split_once(':')?;
    let (rest, complete) = rest.rsplit_once(':')?;
    let (ip, port) = rest.rsplit_once(':')?;
    let complete = match complete {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    Some(PeerEntry::new(
        peer_id.parse().ok()?,
        SocketAddr::new(ip.parse::<IpAddr>().ok()?, port.parse().ok()?),
        complete,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_for_ipv4_and_ipv6() {
        for addr in ["10.1.2.3:16001", "[2001:db8::7]:443", "[::1]:1"] {
            for complete in [false, true] {
                let entry = PeerEntry::new(PeerId::random(), addr.parse().unwrap(), complete);
                assert_eq!(decode_member(&encode_member(&entry)), Some(entry));
            }
        }
        let id = PeerId::random();
        assert_eq!(
            encode_member(&PeerEntry::new(id, "10.0.0.1:5".parse().unwrap(), true)),
            format!("{id}:10.0.0.1:5:1")
        );
        for bad in [
            "",
            "nothex:1.2.3.4:5:1",
            &format!("{id}:1.2.3.4:5:2"),
            &format!("{id}:1.2.3.4:99999:0"),
            &format!("{id}:host:5:0"),
        ] {
            assert_eq!(decode_member(bad), None, "{bad}");
        }
    }

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_host_port("127.0.0.1:6379"),
            Some(("127.0.0.1".into(), 6379))
        );
        assert_eq!(split_host_port("[::1]:6379"), Some(("::1".into(), 6379)));
        assert_eq!(
            split_host_port("redis.local:1"),
            Some(("redis.local".into(), 1))
        );
        assert_eq!(split_host_port("redis.local"), None);
        assert_eq!(split_host_port(":6379"), None);
    }
}
