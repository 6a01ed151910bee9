//! Callback URLs are written by API clients, so a callback must not become a way to make
//! hookq call into its own network (SSRF). Unless `HOOKQ_ALLOW_PRIVATE_CALLBACKS` is on,
//! a callback whose host is, or resolves to, a loopback, private, link-local, shared,
//! unspecified, multicast or documentation address is refused.
//!
//! The check runs twice: [`check_url`] before an attempt is committed (a clear, permanent
//! error, no attempt made), and [`PublicResolver`] inside the callback HTTP client, so the
//! address actually connected to is the checked one even if DNS changes in between
//! (rebinding). The callback client follows no redirects for the same reason.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

use hookq_core::error::{Error, Result};

/// True for addresses a callback must not reach.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => private_v4(v4),
            None => private_v6(v6),
        },
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // 100.64.0.0/10 shared (carrier-grade NAT) and 198.18.0.0/15 benchmarking.
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (18..20).contains(&b))
        || a >= 240
}

fn private_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique local, fe80::/10 link-local, 2001:db8::/32 documentation.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
}

fn refused(host: &str, ip: IpAddr) -> Error {
    Error::Invalid(format!(
        "callback URL refused: {host} is a private or loopback address ({ip}); set HOOKQ_ALLOW_PRIVATE_CALLBACKS=1 to allow it"
    ))
}

/// Checks a callback URL before anything is sent: `http`/`https` only, a host, and (unless
/// `allow_private`) no private address among the host's. Errors are permanent except a
/// failed DNS lookup, which may pass.
pub async fn check_url(url: &Url, allow_private: bool) -> Result<()> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Invalid(format!(
            "callback URL refused: scheme `{}` is not http or https",
            url.scheme()
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| Error::Invalid("callback URL has no host".into()))?;
    if allow_private {
        return Ok(());
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return if is_private(ip) {
            Err(refused(host, ip))
        } else {
            Ok(())
        };
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| Error::Upstream {
            message: format!("cannot resolve callback host {host}: {e}"),
            retry_after: None,
        })?
        .collect();
    match addrs.iter().find(|a| is_private(a.ip())) {
        Some(a) => Err(refused(host, a.ip())),
        None => Ok(()),
    }
}

/// The error [`PublicResolver`] fails a lookup with; the sender recognises it in the
/// error chain and fails the attempt permanently instead of retrying a network error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PrivateAddress(pub String);

/// A DNS resolver for the callback client that drops nothing silently: a name with any
/// private address fails the connection with [`PrivateAddress`].
#[derive(Debug, Default)]
pub struct PublicResolver;

impl PublicResolver {
    /// The resolver, shared, as the client builder takes it.
    pub fn shared() -> Arc<Self> {
        Arc::new(PublicResolver)
    }
}

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(a) = addrs.iter().find(|a| is_private(a.ip())) {
                let e: Box<dyn std::error::Error + Send + Sync> =
                    Box::new(PrivateAddress(refused(&host, a.ip()).to_string()));
                return Err(e);
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn literal_and_named_private_hosts_are_refused_unless_allowed() {
        for u in [
            "http://127.0.0.1:9/x",
            "http://[::1]/x",
            "http://localhost:8080/",
        ] {
            let url = Url::parse(u).unwrap();
            let e = check_url(&url, false).await.unwrap_err();
            assert!(
                e.is_permanent() && e.to_string().contains("private"),
                "{u}: {e}"
            );
            check_url(&url, true).await.unwrap();
        }
        let e = check_url(&Url::parse("ftp://example.com/").unwrap(), true)
            .await
            .unwrap_err();
        assert!(e.is_permanent());
    }
}
