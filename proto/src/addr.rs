//! IP addresses for the policy and the inventory: CIDR ranges as operators write them
//! ([`Cidr`]), and what counts as "the internet" ([`classify`],
//! [`is_internet`]), plus the same knowledge as range lists for the kernel
//! deny table ([`non_internet_ranges`], [`internet_exceptions`]).
//!
//! The classification follows RFC 6890 (Special-Purpose IP Address
//! Registries, as updated by RFC 8190) and the IANA IPv4 and IPv6
//! Special-Purpose Address Registries as of 2026: a block whose "Globally
//! Reachable" column is False (or N/A, such as 6to4 and Teredo) is not the
//! internet, and the globally reachable assignments nested in such blocks
//! (192.0.0.9/32, 2001:3::/32, ...) are. Multicast (224.0.0.0/4,
//! ff00::/8, from the IANA multicast registries) and the limited broadcast
//! address are not in the special-purpose registries, but are not internet
//! destinations either. Everything else is [`Reach::Internet`].
//!
//! IPv4 addresses embedded in IPv6 (IPv4-mapped `::ffff:0:0/96`, and the
//! NAT64 well-known prefix `64:ff9b::/96`) are classified by the IPv4
//! address they carry. Nothing here allocates except the range lists.
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A range of addresses: an IPv4 or IPv6 network address and a prefix
/// length, with no host bits set (`10.0.0.0/8`, `2001:db8::/32`).
///
/// Written as `a/len`, or as a bare address meaning `/32` or `/128`;
/// `10.0.0.1/8` is an error (host bits set), so equal ranges compare equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a text is not a [`Cidr`]: the message names the text and the
/// problem, e.g. "`10.0.0.0/33`: prefix 33 is longer than 32 bits".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrError {
    message: String,
}

impl CidrError {
    fn new(text: &str, problem: fmt::Arguments<'_>) -> Self {
        let message = if text.is_empty() {
            format!("empty string: {problem}")
        } else {
            format!("`{text}`: {problem}")
        };
        CidrError { message }
    }
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CidrError {}

/// The NAT64 well-known prefix 64:ff9b::/96 (RFC 6052), as bits.
const NAT64_PREFIX: u128 = 0x0064_ff9b_0000_0000_0000_0000_0000_0000;
/// The IPv4-mapped prefix ::ffff:0:0/96 (RFC 4291), as bits.
const MAPPED_PREFIX: u128 = 0x0000_0000_0000_0000_0000_ffff_0000_0000;
/// Length of the IPv6 prefixes that embed an IPv4 address.
const EMBED_LEN: u8 = 96;

/// Network mask of an IPv4 prefix length (at most 32).
const fn mask_v4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

/// Network mask of an IPv6 prefix length (at most 128).
const fn mask_v6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    }
}

/// Low 32 bits of an IPv6 address: the IPv4 address a /96 prefix embeds.
const fn embedded_v4(bits: u128) -> Ipv4Addr {
    Ipv4Addr::from_bits((bits & 0xffff_ffff) as u32)
}

/// An address family and its bits, IPv4-mapped IPv6 taken as IPv4.
enum Bits {
    V4(u32, u8),
    V6(u128, u8),
}

impl Cidr {
    /// The network address (host bits are zero).
    #[cfg(test)]
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    #[cfg(test)]
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The range in the IPv6 space, as the kernel's tables key it: the
    /// network address as 16 bytes and the prefix length. IPv4 ranges land
    /// in ::ffff:0:0/96, so `10.0.0.0/8` gives (::ffff:10.0.0.0, 104).
    pub fn mapped(&self) -> ([u8; 16], u8) {
        match self.addr {
            IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), self.prefix + EMBED_LEN),
            IpAddr::V6(a) => (a.octets(), self.prefix),
        }
    }

    /// Whether `ip` is inside the range.
    ///
    /// An IPv4 address is the same address whichever way it is written: an
    /// IPv4 range matches both `a.b.c.d` and `::ffff:a.b.c.d`, and so does
    /// a range written inside ::ffff:0:0/96 (`::ffff:10.0.0.0/104`). Other
    /// IPv6 ranges match IPv6 addresses only: `::/0` does not match IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.bits(), ip.to_canonical()) {
            (Bits::V4(net, len), IpAddr::V4(a)) => a.to_bits() & mask_v4(len) == net,
            (Bits::V6(net, len), IpAddr::V6(a)) => a.to_bits() & mask_v6(len) == net,
            _ => false,
        }
    }

    /// The range by family, a range inside ::ffff:0:0/96 taken as IPv4.
    fn bits(&self) -> Bits {
        match self.addr {
            IpAddr::V4(a) => Bits::V4(a.to_bits(), self.prefix),
            IpAddr::V6(a) => {
                let bits = a.to_bits();
                if self.prefix >= EMBED_LEN && bits & mask_v6(EMBED_LEN) == MAPPED_PREFIX {
                    Bits::V4(embedded_v4(bits).to_bits(), self.prefix - EMBED_LEN)
                } else {
                    Bits::V6(bits, self.prefix)
                }
            }
        }
    }

    /// A range from the tables below (already checked by the tests).
    fn v4(net: u32, prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::from_bits(net)),
            prefix,
        }
    }

    /// A range from the tables below (already checked by the tests).
    fn v6(net: u128, prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::from_bits(net)),
            prefix,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let Some((addr_text, len_text)) = text.split_once('/') else {
            return match text.parse::<IpAddr>() {
                Ok(addr) => Ok(Cidr {
                    addr,
                    prefix: if addr.is_ipv4() { 32 } else { 128 },
                }),
                Err(_) => Err(CidrError::new(
                    text,
                    format_args!("not an IP address or CIDR"),
                )),
            };
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            CidrError::new(text, format_args!("`{addr_text}` is not an IP address"))
        })?;
        if len_text.is_empty() {
            return Err(CidrError::new(
                text,
                format_args!("missing prefix length after `/`"),
            ));
        }
        if !len_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::new(
                text,
                format_args!("prefix length `{len_text}` is not a number"),
            ));
        }
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match len_text.parse::<u8>() {
            Ok(p) if p <= max => p,
            _ => {
                return Err(CidrError::new(
                    text,
                    format_args!("prefix {len_text} is longer than {max} bits"),
                ))
            }
        };
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() & mask_v4(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() & mask_v6(prefix))),
        };
        if network != addr {
            return Err(CidrError::new(
                text,
                format_args!("host bits set; did you mean {network}/{prefix}?"),
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(text: String) -> Result<Self, CidrError> {
        text.parse()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Where an address leads, per the IANA special-purpose registries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reach {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918 private-use ranges and IPv6 unique-local fc00::/7.
    Private,
    /// 100.64.0.0/10, shared address space for carrier-grade NAT.
    SharedCgnat,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// Documentation ranges: TEST-NET-1/2/3, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// Other blocks that are not globally reachable: "this network",
    /// benchmarking, IETF protocol assignments, 6to4, 240.0.0.0/4, ...
    Reserved,
    /// 0.0.0.0 and ::.
    Unspecified,
    /// 255.255.255.255, the limited broadcast address.
    Broadcast,
    /// Everything else: globally reachable.
    Internet,
}

impl Reach {
    /// The snake_case name, as in events and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reach::Loopback => "loopback",
            Reach::Private => "private",
            Reach::SharedCgnat => "shared_cgnat",
            Reach::LinkLocal => "link_local",
            Reach::Multicast => "multicast",
            Reach::Documentation => "documentation",
            Reach::Reserved => "reserved",
            Reach::Unspecified => "unspecified",
            Reach::Broadcast => "broadcast",
            Reach::Internet => "internet",
        }
    }
}

impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One IPv4 block of the tables: network bits, prefix length, class.
struct V4Block {
    net: u32,
    len: u8,
    reach: Reach,
}

/// One IPv6 block of the tables: network bits, prefix length, class.
struct V6Block {
    net: u128,
    len: u8,
    reach: Reach,
}

const fn v4(o: [u8; 4], len: u8, reach: Reach) -> V4Block {
    V4Block {
        net: u32::from_be_bytes(o),
        len,
        reach,
    }
}

const fn v6(s: [u16; 8], len: u8, reach: Reach) -> V6Block {
    V6Block {
        net: Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]).to_bits(),
        len,
        reach,
    }
}

impl V4Block {
    const fn contains(&self, bits: u32) -> bool {
        bits & mask_v4(self.len) == self.net
    }
}

impl V6Block {
    const fn contains(&self, bits: u128) -> bool {
        bits & mask_v6(self.len) == self.net
    }
}

/// IPv4 blocks that are not the internet. The first match wins: a block
/// comes before any block that contains it (the tests check it).
const V4_SPECIAL: &[V4Block] = &[
    v4([0, 0, 0, 0], 32, Reach::Unspecified), // "This host on this network"
    v4([0, 0, 0, 0], 8, Reach::Reserved),     // "This network"
    v4([10, 0, 0, 0], 8, Reach::Private),
    v4([100, 64, 0, 0], 10, Reach::SharedCgnat),
    v4([127, 0, 0, 0], 8, Reach::Loopback),
    v4([169, 254, 0, 0], 16, Reach::LinkLocal),
    v4([172, 16, 0, 0], 12, Reach::Private),
    v4([192, 0, 0, 0], 24, Reach::Reserved), // IETF protocol assignments
    v4([192, 0, 2, 0], 24, Reach::Documentation), // TEST-NET-1
    v4([192, 88, 99, 0], 24, Reach::Reserved), // deprecated 6to4 relay anycast
    v4([192, 168, 0, 0], 16, Reach::Private),
    v4([198, 18, 0, 0], 15, Reach::Reserved), // benchmarking
    v4([198, 51, 100, 0], 24, Reach::Documentation), // TEST-NET-2
    v4([203, 0, 113, 0], 24, Reach::Documentation), // TEST-NET-3
    v4([224, 0, 0, 0], 4, Reach::Multicast),
    v4([255, 255, 255, 255], 32, Reach::Broadcast),
    v4([240, 0, 0, 0], 4, Reach::Reserved),
];

/// Globally reachable IPv4 assignments inside the blocks above.
const V4_GLOBAL: &[V4Block] = &[
    v4([192, 0, 0, 9], 32, Reach::Internet),  // PCP anycast
    v4([192, 0, 0, 10], 32, Reach::Internet), // TURN anycast
];

/// IPv6 blocks that are not the internet, besides ::ffff:0:0/96 and
/// 64:ff9b::/96 (classified by the IPv4 address they carry). The first
/// match wins, as for [`V4_SPECIAL`].
const V6_SPECIAL: &[V6Block] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, Reach::Unspecified),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, Reach::Loopback),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, Reach::Reserved), // local-use NAT64
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, Reach::Reserved),     // discard-only
    v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, Reach::Reserved),     // dummy prefix (RFC 9780)
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, Reach::Reserved),    // IETF protocol assignments
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, Reach::Documentation),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, Reach::Reserved), // 6to4
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, Reach::Documentation),
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, Reach::Reserved), // SRv6 SIDs
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, Reach::Private),   // unique-local
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, Reach::LinkLocal),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, Reach::Multicast),
];

/// Globally reachable IPv6 assignments inside the blocks above (all in
/// 2001::/23).
const V6_GLOBAL: &[V6Block] = &[
    v6([0x2001, 1, 0, 0, 0, 0, 0, 1], 128, Reach::Internet), // PCP anycast
    v6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128, Reach::Internet), // TURN anycast
    v6([0x2001, 1, 0, 0, 0, 0, 0, 3], 128, Reach::Internet), // DNS-SD SRP anycast (RFC 9665)
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32, Reach::Internet),  // AMT
    v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48, Reach::Internet), // AS112-v6
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28, Reach::Internet), // ORCHIDv2
    v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28, Reach::Internet), // drone remote ID DETs
];

fn classify_v4(ip: Ipv4Addr) -> Reach {
    let bits = ip.to_bits();
    if V4_GLOBAL.iter().any(|b| b.contains(bits)) {
        return Reach::Internet;
    }
    V4_SPECIAL
        .iter()
        .find(|b| b.contains(bits))
        .map_or(Reach::Internet, |b| b.reach)
}

fn classify_v6(ip: Ipv6Addr) -> Reach {
    let bits = ip.to_bits();
    let embed = bits & mask_v6(EMBED_LEN);
    if embed == MAPPED_PREFIX || embed == NAT64_PREFIX {
        return classify_v4(embedded_v4(bits));
    }
    if V6_GLOBAL.iter().any(|b| b.contains(bits)) {
        return Reach::Internet;
    }
    V6_SPECIAL
        .iter()
        .find(|b| b.contains(bits))
        .map_or(Reach::Internet, |b| b.reach)
}

/// Where `ip` leads, per the IANA special-purpose registries (see the
/// module documentation). IPv4-mapped and NAT64 (64:ff9b::/96) IPv6
/// addresses are classified by the IPv4 address they carry.
pub fn classify(ip: IpAddr) -> Reach {
    match ip {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => classify_v6(a),
    }
}

/// Whether a connection to `ip` is internet egress: the address is
/// globally reachable ([`Reach::Internet`]) and not inside any of the
/// operator's `allow` ranges (see [`Cidr::contains`]).
pub fn is_internet(ip: IpAddr, allow: &[Cidr]) -> bool {
    classify(ip) == Reach::Internet && !allow.iter().any(|c| c.contains(ip))
}

/// Every range [`classify`] does not call [`Reach::Internet`], for a
/// longest-prefix-match table that denies 0.0.0.0/0 and ::/0 and allows
/// these (then denies [`internet_exceptions`] again).
///
/// IPv4 ranges come as IPv4 (map them with [`Cidr::mapped`] for an IPv6
/// keyed table), then the IPv6 ranges, then the IPv4 ranges again inside
/// the NAT64 prefix 64:ff9b::/96. Ranges may nest (0.0.0.0/32 is inside
/// 0.0.0.0/8); that is harmless for longest-prefix matching.
pub fn non_internet_ranges() -> Vec<Cidr> {
    let v4 = V4_SPECIAL.iter().map(|b| Cidr::v4(b.net, b.len));
    let v6 = V6_SPECIAL.iter().map(|b| Cidr::v6(b.net, b.len));
    let nat64 = V4_SPECIAL.iter().map(nat64_block);
    v4.chain(v6).chain(nat64).collect()
}

/// The globally reachable ranges nested inside [`non_internet_ranges`]
/// (192.0.0.9/32, 2001:3::/32, ...), in the same order and forms: IPv4,
/// IPv6, then IPv4 inside 64:ff9b::/96. Each is longer than the range it
/// sits in, so a longest-prefix-match table can deny it again.
pub fn internet_exceptions() -> Vec<Cidr> {
    let v4 = V4_GLOBAL.iter().map(|b| Cidr::v4(b.net, b.len));
    let v6 = V6_GLOBAL.iter().map(|b| Cidr::v6(b.net, b.len));
    let nat64 = V4_GLOBAL.iter().map(nat64_block);
    v4.chain(v6).chain(nat64).collect()
}

/// An IPv4 block inside the NAT64 well-known prefix.
fn nat64_block(b: &V4Block) -> Cidr {
    Cidr::v6(NAT64_PREFIX | u128::from(b.net), b.len + EMBED_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    /// The last address of a range.
    fn last(c: &Cidr) -> IpAddr {
        match c.addr() {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() | !mask_v4(c.prefix()))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() | !mask_v6(c.prefix()))),
        }
    }

    #[test]
    fn classify_ipv4() {
        use Reach::*;
        let cases = [
            // 0.0.0.0/8 "this network"
            ("0.0.0.0", Unspecified),
            ("0.0.0.1", Reserved),
            ("0.255.255.255", Reserved),
            ("1.0.0.0", Internet),
            // 10.0.0.0/8
            ("9.255.255.255", Internet),
            ("10.0.0.0", Private),
            ("10.255.255.255", Private),
            ("11.0.0.0", Internet),
            // 100.64.0.0/10
            ("100.63.255.255", Internet),
            ("100.64.0.0", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("100.128.0.0", Internet),
            // 127.0.0.0/8
            ("126.255.255.255", Internet),
            ("127.0.0.0", Loopback),
            ("127.0.0.1", Loopback),
            ("127.255.255.255", Loopback),
            ("128.0.0.0", Internet),
            // 169.254.0.0/16
            ("169.253.255.255", Internet),
            ("169.254.0.0", LinkLocal),
            ("169.254.169.254", LinkLocal),
            ("169.254.255.255", LinkLocal),
            ("169.255.0.0", Internet),
            // 172.16.0.0/12
            ("172.15.255.255", Internet),
            ("172.16.0.0", Private),
            ("172.31.255.255", Private),
            ("172.32.0.0", Internet),
            // 192.0.0.0/24 and its globally reachable /32s
            ("191.255.255.255", Internet),
            ("192.0.0.0", Reserved),
            ("192.0.0.8", Reserved),
            ("192.0.0.9", Internet),
            ("192.0.0.10", Internet),
            ("192.0.0.11", Reserved),
            ("192.0.0.170", Reserved),
            ("192.0.0.255", Reserved),
            ("192.0.1.0", Internet),
            // 192.0.2.0/24
            ("192.0.2.0", Documentation),
            ("192.0.2.255", Documentation),
            ("192.0.3.0", Internet),
            // 192.31.196.0/24 AS112-v4: globally reachable
            ("192.31.196.1", Internet),
            // 192.88.99.0/24
            ("192.88.98.255", Internet),
            ("192.88.99.0", Reserved),
            ("192.88.99.2", Reserved),
            ("192.88.99.255", Reserved),
            ("192.88.100.0", Internet),
            // 192.168.0.0/16
            ("192.167.255.255", Internet),
            ("192.168.0.0", Private),
            ("192.168.255.255", Private),
            ("192.169.0.0", Internet),
            // 198.18.0.0/15
            ("198.17.255.255", Internet),
            ("198.18.0.0", Reserved),
            ("198.19.255.255", Reserved),
            ("198.20.0.0", Internet),
            // 198.51.100.0/24
            ("198.51.99.255", Internet),
            ("198.51.100.0", Documentation),
            ("198.51.100.255", Documentation),
            ("198.51.101.0", Internet),
            // 203.0.113.0/24
            ("203.0.112.255", Internet),
            ("203.0.113.0", Documentation),
            ("203.0.113.255", Documentation),
            ("203.0.114.0", Internet),
            // 224.0.0.0/4, 240.0.0.0/4, 255.255.255.255
            ("223.255.255.255", Internet),
            ("224.0.0.0", Multicast),
            ("239.255.255.255", Multicast),
            ("240.0.0.0", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Broadcast),
            // ordinary public addresses
            ("8.8.8.8", Internet),
            ("1.1.1.1", Internet),
        ];
        for (addr, want) in cases {
            assert_eq!(classify(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn classify_ipv6() {
        use Reach::*;
        let cases = [
            ("::", Unspecified),
            ("::1", Loopback),
            ("::2", Internet),
            // IPv4-mapped: the embedded address decides
            ("::fffe:ffff:ffff", Internet),
            ("::ffff:0.0.0.0", Unspecified),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:192.0.0.9", Internet),
            ("::ffff:192.0.0.8", Reserved),
            ("::ffff:8.8.8.8", Internet),
            ("::ffff:255.255.255.255", Broadcast),
            ("::1:0:0:0", Internet),
            // NAT64 well-known prefix: the embedded address decides
            ("64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", Internet),
            ("64:ff9b::8.8.8.8", Internet),
            ("64:ff9b::10.0.0.1", Private),
            ("64:ff9b::100.64.0.1", SharedCgnat),
            ("64:ff9b::192.0.0.10", Internet),
            ("64:ff9b::255.255.255.255", Broadcast),
            ("64:ff9b::1:0:0", Internet),
            // 64:ff9b:1::/48 local-use NAT64
            ("64:ff9b:1::", Reserved),
            ("64:ff9b:1::10.0.0.1", Reserved),
            ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", Reserved),
            ("64:ff9b:2::", Internet),
            // 100::/64 discard-only, 100:0:0:1::/64 dummy
            ("ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Internet),
            ("100::", Reserved),
            ("100::ffff:ffff:ffff:ffff", Reserved),
            ("100:0:0:1::", Reserved),
            ("100:0:0:1:ffff:ffff:ffff:ffff", Reserved),
            ("100:0:0:2::", Internet),
            // 2001::/23 and its globally reachable assignments
            ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Internet),
            ("2001::", Reserved),
            ("2001:0:ffff::1", Reserved),
            ("2001:1::", Reserved),
            ("2001:1::1", Internet),
            ("2001:1::2", Internet),
            ("2001:1::3", Internet),
            ("2001:1::4", Reserved),
            ("2001:2::", Reserved),
            ("2001:2:ffff::", Reserved),
            ("2001:3::", Internet),
            ("2001:3:ffff:ffff:ffff:ffff:ffff:ffff", Internet),
            ("2001:4::", Reserved),
            ("2001:4:111:ffff:ffff:ffff:ffff:ffff", Reserved),
            ("2001:4:112::", Internet),
            ("2001:4:112:ffff:ffff:ffff:ffff:ffff", Internet),
            ("2001:4:113::", Reserved),
            ("2001:10::", Reserved),
            ("2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", Reserved),
            ("2001:20::", Internet),
            ("2001:2f:ffff:ffff:ffff:ffff:ffff:ffff", Internet),
            ("2001:30::", Internet),
            ("2001:3f:ffff:ffff:ffff:ffff:ffff:ffff", Internet),
            ("2001:40::", Reserved),
            ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", Reserved),
            ("2001:200::", Internet),
            // 2001:db8::/32
            ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", Internet),
            ("2001:db8::", Documentation),
            ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", Documentation),
            ("2001:db9::", Internet),
            ("2001:4860:4860::8888", Internet),
            // 2002::/16 6to4
            ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Internet),
            ("2002::", Reserved),
            ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Reserved),
            ("2003::", Internet),
            // AS112 direct delegation: globally reachable
            ("2620:4f:8000::1", Internet),
            // 3fff::/20
            ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Internet),
            ("3fff::", Documentation),
            ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", Documentation),
            ("3fff:1000::", Internet),
            // 5f00::/16 SRv6 SIDs
            ("5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Internet),
            ("5f00::", Reserved),
            ("5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Reserved),
            ("5f01::", Internet),
            // fc00::/7 unique-local
            ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Internet),
            ("fc00::", Private),
            ("fd12:3456::1", Private),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Private),
            ("fe00::", Internet),
            // fe80::/10 link-local
            ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Internet),
            ("fe80::", LinkLocal),
            ("fe80::1", LinkLocal),
            ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", LinkLocal),
            ("fec0::", Internet),
            // ff00::/8 multicast
            ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Internet),
            ("ff00::", Multicast),
            ("ff02::1", Multicast),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Multicast),
        ];
        for (addr, want) in cases {
            assert_eq!(classify(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn reach_names() {
        use Reach::*;
        let cases = [
            (Loopback, "loopback"),
            (Private, "private"),
            (SharedCgnat, "shared_cgnat"),
            (LinkLocal, "link_local"),
            (Multicast, "multicast"),
            (Documentation, "documentation"),
            (Reserved, "reserved"),
            (Unspecified, "unspecified"),
            (Broadcast, "broadcast"),
            (Internet, "internet"),
        ];
        for (reach, name) in cases {
            assert_eq!(reach.as_str(), name);
            assert_eq!(reach.to_string(), name);
        }
    }

    #[test]
    fn parse_and_display() {
        let cases = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("192.0.0.9/32", "192.0.0.9/32"),
            ("10.0.0.1", "10.0.0.1/32"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("2001:DB8:0::/32", "2001:db8::/32"),
            ("::/0", "::/0"),
            ("::1", "::1/128"),
            ("::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104"),
            ("10.0.0.0/08", "10.0.0.0/8"),
        ];
        for (text, shown) in cases {
            let c = cidr(text);
            assert_eq!(c.to_string(), shown, "{text}");
            // Display round trip
            assert_eq!(cidr(shown), c, "{text}");
            assert_eq!(Cidr::try_from(shown.to_owned()), Ok(c));
        }
        let c = cidr("10.0.0.0/8");
        assert_eq!(c.addr(), ip("10.0.0.0"));
        assert_eq!(c.prefix(), 8);
        assert_eq!(cidr("2001:db8::1").prefix(), 128);
    }

    #[test]
    fn parse_errors() {
        let cases = [
            ("abc", "`abc`: not an IP address or CIDR"),
            ("", "empty string: not an IP address or CIDR"),
            ("fe80::1%eth0", "`fe80::1%eth0`: not an IP address or CIDR"),
            ("abc/8", "`abc/8`: `abc` is not an IP address"),
            ("/8", "`/8`: `` is not an IP address"),
            ("10.0.0.0/", "`10.0.0.0/`: missing prefix length after `/`"),
            ("10.0.0.0/x", "`10.0.0.0/x`: prefix length `x` is not a number"),
            ("10.0.0.0/+8", "`10.0.0.0/+8`: prefix length `+8` is not a number"),
            ("10.0.0.0/8/8", "`10.0.0.0/8/8`: prefix length `8/8` is not a number"),
            ("10.0.0.0/33", "`10.0.0.0/33`: prefix 33 is longer than 32 bits"),
            ("10.0.0.0/256", "`10.0.0.0/256`: prefix 256 is longer than 32 bits"),
            (
                "10.0.0.0/99999999999999999999999",
                "`10.0.0.0/99999999999999999999999`: prefix 99999999999999999999999 is longer than 32 bits",
            ),
            ("2001:db8::/129", "`2001:db8::/129`: prefix 129 is longer than 128 bits"),
            ("10.0.0.1/8", "`10.0.0.1/8`: host bits set; did you mean 10.0.0.0/8?"),
            ("0.0.0.1/0", "`0.0.0.1/0`: host bits set; did you mean 0.0.0.0/0?"),
            (
                "2001:db8::1/32",
                "`2001:db8::1/32`: host bits set; did you mean 2001:db8::/32?",
            ),
        ];
        for (text, message) in cases {
            let err = text.parse::<Cidr>().unwrap_err();
            assert_eq!(err.to_string(), message, "{text}");
            assert_eq!(Cidr::try_from(text.to_owned()).unwrap_err(), err);
        }
    }

    #[test]
    fn deserialize() {
        let c: Cidr = serde_json::from_str("\"10.0.0.0/8\"").unwrap();
        assert_eq!(c, cidr("10.0.0.0/8"));
        let err = serde_json::from_str::<Cidr>("\"10.0.0.1/8\"").unwrap_err();
        assert!(
            err.to_string().contains("did you mean 10.0.0.0/8?"),
            "{err}"
        );
    }

    #[test]
    fn contains() {
        let cases = [
            // IPv4 range: IPv4 and its mapped form, nothing else
            ("10.0.0.0/8", "10.0.0.0", true),
            ("10.0.0.0/8", "10.255.255.255", true),
            ("10.0.0.0/8", "9.255.255.255", false),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("10.0.0.0/8", "::ffff:11.0.0.0", false),
            ("10.0.0.0/8", "::10.1.2.3", false),
            ("10.0.0.0/8", "64:ff9b::10.1.2.3", false),
            ("10.0.0.0/8", "2001:db8::", false),
            ("192.0.0.9/32", "192.0.0.9", true),
            ("192.0.0.9/32", "192.0.0.10", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("0.0.0.0/0", "::ffff:8.8.8.8", true),
            ("0.0.0.0/0", "::1", false),
            // IPv6 range
            ("2001:db8::/32", "2001:db8::", true),
            (
                "2001:db8::/32",
                "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
                true,
            ),
            ("2001:db8::/32", "2001:db9::", false),
            (
                "2001:db8::/32",
                "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
                false,
            ),
            ("2001:db8::/32", "10.0.0.1", false),
            ("::1/128", "::1", true),
            ("::1/128", "::", false),
            ("::/0", "2001:db8::1", true),
            ("::/0", "::", true),
            ("::/0", "10.0.0.1", false),
            ("::/0", "::ffff:10.0.0.1", false),
            // an IPv6 range written inside ::ffff:0:0/96 is an IPv4 range
            ("::ffff:10.0.0.0/104", "10.1.2.3", true),
            ("::ffff:10.0.0.0/104", "::ffff:10.1.2.3", true),
            ("::ffff:10.0.0.0/104", "11.0.0.0", false),
            ("::ffff:0:0/96", "1.2.3.4", true),
            ("::ffff:0:0/96", "2001:db8::", false),
            ("64:ff9b::/96", "64:ff9b::8.8.8.8", true),
            ("64:ff9b::/96", "8.8.8.8", false),
        ];
        for (range, addr, want) in cases {
            assert_eq!(
                cidr(range).contains(ip(addr)),
                want,
                "{range} contains {addr}"
            );
        }
    }

    #[test]
    fn mapped() {
        let cases = [
            ("10.0.0.0/8", "::ffff:10.0.0.0", 104),
            ("0.0.0.0/0", "::ffff:0.0.0.0", 96),
            ("192.0.0.9/32", "::ffff:192.0.0.9", 128),
            ("2001:db8::/32", "2001:db8::", 32),
            ("::/0", "::", 0),
            ("::1", "::1", 128),
        ];
        for (range, addr, len) in cases {
            let want: Ipv6Addr = addr.parse().unwrap();
            assert_eq!(cidr(range).mapped(), (want.octets(), len), "{range}");
        }
    }

    #[test]
    fn internet_with_allow_list() {
        let allow = [cidr("8.8.8.0/24"), cidr("2001:4860::/32")];
        let cases = [
            ("8.8.8.8", &allow[..0], true),
            ("8.8.8.8", &allow[..], false),
            ("::ffff:8.8.8.8", &allow[..], false),
            ("8.8.9.8", &allow[..], true),
            ("2001:4860::8888", &allow[..0], true),
            ("2001:4860::8888", &allow[..], false),
            ("2001:4861::1", &allow[..], true),
            ("10.0.0.1", &allow[..0], false),
            ("fe80::1", &allow[..0], false),
            ("192.0.0.9", &allow[..0], true),
            ("64:ff9b::8.8.8.8", &allow[..0], true),
            ("64:ff9b::10.0.0.1", &allow[..0], false),
        ];
        for (addr, allow, want) in cases {
            assert_eq!(is_internet(ip(addr), allow), want, "{addr} {allow:?}");
        }
    }

    #[test]
    fn tables_are_well_formed() {
        // Network addresses only, and first match == longest match: no
        // block comes after a block that contains it.
        for (i, b) in V4_SPECIAL.iter().chain(V4_GLOBAL).enumerate() {
            assert!(b.len <= 32 && b.net & !mask_v4(b.len) == 0, "v4 block {i}");
        }
        for (i, b) in V6_SPECIAL.iter().chain(V6_GLOBAL).enumerate() {
            assert!(b.len <= 128 && b.net & !mask_v6(b.len) == 0, "v6 block {i}");
        }
        for (i, a) in V4_SPECIAL.iter().enumerate() {
            for b in &V4_SPECIAL[i + 1..] {
                let overlap = a.contains(b.net) || b.contains(a.net);
                assert!(
                    !overlap || a.len > b.len,
                    "v4 block {i} before a longer one"
                );
            }
        }
        for (i, a) in V6_SPECIAL.iter().enumerate() {
            for b in &V6_SPECIAL[i + 1..] {
                let overlap = a.contains(b.net) || b.contains(a.net);
                assert!(
                    !overlap || a.len > b.len,
                    "v6 block {i} before a longer one"
                );
            }
        }
    }

    #[test]
    fn range_lists_agree_with_classify() {
        let ranges = non_internet_ranges();
        assert_eq!(
            ranges.len(),
            2 * V4_SPECIAL.len() + V6_SPECIAL.len(),
            "{ranges:?}"
        );
        for c in &ranges {
            // A round trip through text checks host bits and lengths.
            assert_eq!(&cidr(&c.to_string()), c);
            assert_ne!(classify(c.addr()), Reach::Internet, "first of {c}");
            assert_ne!(classify(last(c)), Reach::Internet, "last of {c}");
        }
        for (v4, nat64) in ranges
            .iter()
            .take(V4_SPECIAL.len())
            .zip(ranges.iter().skip(V4_SPECIAL.len() + V6_SPECIAL.len()))
        {
            assert_eq!(classify(v4.addr()), classify(nat64.addr()), "{v4} {nat64}");
        }
        assert!(ranges.contains(&cidr("192.0.0.0/24")));
        assert!(ranges.contains(&cidr("64:ff9b::c000:0/120")));
        assert!(ranges.contains(&cidr("fc00::/7")));

        let exceptions = internet_exceptions();
        assert_eq!(
            exceptions.len(),
            2 * V4_GLOBAL.len() + V6_GLOBAL.len(),
            "{exceptions:?}"
        );
        for e in &exceptions {
            assert_eq!(&cidr(&e.to_string()), e);
            assert_eq!(classify(e.addr()), Reach::Internet, "first of {e}");
            assert_eq!(classify(last(e)), Reach::Internet, "last of {e}");
            // Nested in a non-internet range, and longer than it.
            let outer: Vec<_> = ranges
                .iter()
                .filter(|r| r.addr().is_ipv4() == e.addr().is_ipv4() && r.contains(e.addr()))
                .collect();
            assert!(!outer.is_empty(), "{e} is not inside a non-internet range");
            assert!(
                outer.iter().all(|r| r.prefix() < e.prefix()),
                "{e} in {outer:?}"
            );
        }
        assert!(exceptions.contains(&cidr("192.0.0.9/32")));
        assert!(exceptions.contains(&cidr("2001:30::/28")));
        assert!(exceptions.contains(&cidr("64:ff9b::c000:a/128")));
    }
}
