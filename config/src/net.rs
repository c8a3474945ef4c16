//! Address helpers: CIDR lists and listener sanity checks.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use crate::validate::ValidationError;

/// Kraken's `allowed_cidrs` default: loopback (both families) and the Docker bridge gateway.
pub(crate) fn default_allowed_cidrs() -> Vec<IpNet> {
    vec![
        IpNet::new_assert(Ipv4Addr::LOCALHOST.into(), 32),
        IpNet::new_assert(Ipv6Addr::LOCALHOST.into(), 128),
        IpNet::new_assert(Ipv4Addr::new(172, 17, 0, 1).into(), 32),
    ]
}

/// Two TCP listeners on the same address cannot both bind. Port 0 (pick any) never clashes.
pub(crate) fn distinct_tcp_listeners(
    listeners: &[(&str, SocketAddr)],
) -> Result<(), ValidationError> {
    for (index, (key, addr)) in listeners.iter().enumerate() {
        if addr.port() == 0 {
            continue;
        }
        let clash = listeners[..index].iter().find(|(_, other)| {
            other.port() == addr.port()
                && (other.ip() == addr.ip()
                    || other.ip().is_unspecified()
                    || addr.ip().is_unspecified())
        });
        if let Some((other_key, _)) = clash {
            return Err(ValidationError::at(
                key,
                format!(
                    "{addr} clashes with listen.{other_key}: each TCP listener needs its own port"
                ),
            ));
        }
    }
    Ok(())
}

/// `#[serde(with = "crate::net::cidr_list")]` — a list of networks in CIDR notation.
pub(crate) mod cidr_list {
    use serde::de::{self, Deserializer, SeqAccess, Visitor};
    use serde::ser::{SerializeSeq, Serializer};

    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        value: &[IpNet],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(value.len()))?;
        for net in value {
            seq.serialize_element(&net.to_string())?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<IpNet>, D::Error> {
        deserializer.deserialize_seq(ListVisitor)
    }

    struct ListVisitor;

    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<IpNet>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of networks in CIDR notation, e.g. [127.0.0.1/32, \"::1/128\"]")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<IpNet>, A::Error> {
            let mut nets = Vec::new();
            while let Some(net) = seq.next_element::<Cidr>()? {
                nets.push(net.0);
            }
            Ok(nets)
        }
    }

    struct Cidr(IpNet);

    impl<'de> de::Deserialize<'de> for Cidr {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let text = <String as de::Deserialize>::deserialize(deserializer)?;
            // A bare address means that one host, which is what people mean by `10.0.0.5`.
            let parsed = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
            parsed.map(Cidr).map_err(|_| {
                de::Error::invalid_value(
                    de::Unexpected::Str(&text),
                    &"a network in CIDR notation such as `10.0.0.0/8` or `::1/128`",
                )
            })
        }
    }
}
