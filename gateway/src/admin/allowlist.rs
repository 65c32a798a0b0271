//! The admin API's source-address allowlist. The address judged is the TCP peer's. Only when the peer is one of
//! `admin.trusted_proxies` do its forwarding headers count: `X-Forwarded-For` is read right to left and the
//! first hop that is not itself a trusted proxy is the client (hops to its left were written by the client and
//! prove nothing); without `X-Forwarded-For`, `X-Real-IP`. From any other peer those headers are ignored —
//! APISIX believed a forwarded `X-Real-IP` and its admin allowlist was bypassed that way (CVE-2022-24112).

use std::net::IpAddr;

use actix_web::http::header::HeaderMap;
use ipnet::IpNet;

use crate::admin::error::AdminError;

/// Who may reach the admin API, and whose forwarding headers are believed.
#[derive(Debug, Clone)]
pub struct Allowlist {
    allow: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
}

impl Allowlist {
    pub fn new(allow: Vec<IpNet>, trusted_proxies: Vec<IpNet>) -> Self {
        Self {
            allow,
            trusted_proxies,
        }
    }

    /// The client address of a request from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, AdminError> {
        if !contains(&self.trusted_proxies, peer) {
            return Ok(peer);
        }
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .map(|v| v.to_str().map_err(|_| AdminError::BadForwardedAddress))
            .collect::<Result<_, _>>()?;
        if !forwarded.is_empty() {
            let hops = forwarded.iter().flat_map(|v| v.split(',')).map(str::trim);
            // The peer is the nearest hop; walk away from it while the hops are trusted proxies.
            let mut client = peer;
            for hop in hops.collect::<Vec<_>>().into_iter().rev() {
                client = parse(hop)?;
                if !contains(&self.trusted_proxies, client) {
                    break;
                }
            }
            return Ok(client);
        }
        match headers.get("x-real-ip") {
            Some(real) => real
                .to_str()
                .map_err(|_| AdminError::BadForwardedAddress)
                .and_then(|v| parse(v.trim())),
            None => Ok(peer),
        }
    }

    /// Is a request from `peer` with `headers` allowed? The client address it was judged by, either way.
    pub fn judge(&self, peer: IpAddr, headers: &HeaderMap) -> (Option<IpAddr>, Result<(), AdminError>) {
        match self.client(peer, headers) {
            Ok(client) if contains(&self.allow, client) => (Some(client), Ok(())),
            Ok(client) => (Some(client), Err(AdminError::AddressNotAllowed)),
            Err(e) => (None, Err(e)),
        }
    }
}

fn parse(hop: &str) -> Result<IpAddr, AdminError> {
    hop.parse::<IpAddr>()
        .map(|ip| ip.to_canonical())
        .map_err(|_| AdminError::BadForwardedAddress)
}

fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        headers
    }

    fn list() -> Allowlist {
        Allowlist::new(vec![net("10.0.0.0/8")], vec![net("192.168.1.0/24")])
    }

    #[test]
    fn an_untrusted_peer_is_judged_by_its_own_address_whatever_it_forwards() {
        let spoofed = headers(&[("x-real-ip", "10.1.2.3"), ("x-forwarded-for", "10.1.2.3")]);
        assert_eq!(
            list().client(ip("203.0.113.7"), &spoofed).unwrap(),
            ip("203.0.113.7")
        );
        assert!(list().judge(ip("203.0.113.7"), &spoofed).1.is_err());
        assert!(list().judge(ip("10.9.9.9"), &HeaderMap::new()).1.is_ok());
    }

    #[test]
    fn a_trusted_proxy_forwards_the_rightmost_untrusted_hop() {
        let proxy = ip("192.168.1.5");
        // The client wrote 10.0.0.1 itself; the proxies saw 203.0.113.7.
        let h = headers(&[("x-forwarded-for", "10.0.0.1, 203.0.113.7, 192.168.1.9")]);
        assert_eq!(list().client(proxy, &h).unwrap(), ip("203.0.113.7"));
        let h = headers(&[("x-forwarded-for", "10.1.2.3")]);
        assert!(list().judge(proxy, &h).1.is_ok());
        let h = headers(&[("x-real-ip", "10.1.2.3")]);
        assert_eq!(list().client(proxy, &h).unwrap(), ip("10.1.2.3"));
        assert_eq!(list().client(proxy, &HeaderMap::new()).unwrap(), proxy);
    }

    #[test]
    fn an_unreadable_forwarded_address_is_refused() {
        let h = headers(&[("x-forwarded-for", "10.1.2.3, not-an-ip")]);
        assert!(matches!(
            list().judge(ip("192.168.1.5"), &h).1,
            Err(AdminError::BadForwardedAddress)
        ));
    }

    #[test]
    fn ipv4_mapped_ipv6_peers_match_ipv4_networks() {
        let list = Allowlist::new(vec![net("127.0.0.1/32")], Vec::new());
        assert!(list.judge(ip("::ffff:127.0.0.1"), &HeaderMap::new()).1.is_ok());
    }
}
