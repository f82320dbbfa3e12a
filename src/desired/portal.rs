use std::fmt;
use std::net::IpAddr;

/// A portal as written: an address or host name and a port (3260 when omitted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Portal {
    pub host: PortalHost,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortalHost {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Portal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            PortalHost::Ip(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
            PortalHost::Ip(IpAddr::V4(a)) => write!(f, "{a}:{}", self.port),
            PortalHost::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}
