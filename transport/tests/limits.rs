//! The `limits:` config sections convert to the transport's server settings, and their
//! defaults are the transport's own: a component with no `limits:` runs as before.

use kraken_config::limits::{GrpcLimitsConfig, HttpLimitsConfig, P2pLimitsConfig};
use kraken_transport::grpc::GrpcServerLimits;
use kraken_transport::http::HttpServerLimits;
use kraken_transport::quic::QuicTuning;

#[test]
fn default_sections_are_the_transport_defaults() {
    // The structs have no PartialEq (they hold nothing comparable beyond plain values);
    // their Debug output lists every field.
    assert_eq!(
        format!(
            "{:?}",
            GrpcServerLimits::from(
                &GrpcLimitsConfig::<kraken_config::limits::StandardRequests>::default()
            )
        ),
        format!("{:?}", GrpcServerLimits::default())
    );
    assert_eq!(
        format!("{:?}", HttpServerLimits::from(&HttpLimitsConfig::default())),
        format!("{:?}", HttpServerLimits::default())
    );
    assert_eq!(
        format!(
            "{:?}",
            QuicTuning::default().with_limits(&P2pLimitsConfig::default())
        ),
        format!("{:?}", QuicTuning::default())
    );
}

#[test]
fn configured_values_reach_the_servers() {
    let mut origin = kraken_config::limits::OriginGrpcLimits::default();
    origin.max_connections = 7;
    let grpc = GrpcServerLimits::from(&origin);
    assert_eq!(grpc.max_connections, 7);
    assert_eq!(
        grpc.request_timeout,
        std::time::Duration::from_secs(6 * 3600)
    );
    let http = HttpServerLimits::from(&HttpLimitsConfig {
        header_read_timeout: std::time::Duration::from_millis(300),
        ..HttpLimitsConfig::default()
    });
    assert_eq!(
        http.header_read_timeout,
        std::time::Duration::from_millis(300)
    );
    let quic = QuicTuning::default().with_limits(&P2pLimitsConfig {
        max_piece_streams_per_connection: 3,
        max_connections_per_ip: 2,
        ..P2pLimitsConfig::default()
    });
    assert_eq!(quic.max_concurrent_uni_streams, 3);
    assert_eq!(quic.max_connections_per_ip, 2);
}
