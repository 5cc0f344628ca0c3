//! Frames on the wire between the ranks and the coordinator: a little-endian `u32` length, the
//! body, and the body's MAC. The receiver names the most it accepts, so a peer cannot make it
//! allocate more than the message it expects.

use std::io::{self, Read, Write};

use crate::distributed::run_key::MAC_BYTES;

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, body: &[u8], mac: &[u8; MAC_BYTES]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a message over 4 GiB"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(body)?;
    w.write_all(mac)?;
    w.flush()
}

/// Reads one frame of at most `max` body bytes: the body and its MAC (not verified here).
pub fn read_frame(r: &mut impl Read, max: usize) -> io::Result<(Vec<u8>, [u8; MAC_BYTES])> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a message of {len} bytes, more than the {max} expected"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let mut mac = [0u8; MAC_BYTES];
    r.read_exact(&mut mac)?;
    Ok((body, mac))
}

/// Whether `e` is a read or write that ran past its socket timeout.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Whether `host` names this machine's loopback interface only.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The IPv4 addresses on which something listens on TCP `port` on this machine (Linux's
/// `/proc/net/tcp`): how tests check that a server is bound where it was asked.
pub fn listening_on(port: u16) -> io::Result<Vec<std::net::Ipv4Addr>> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            let (ip, p) = local.split_once(':')?;
            let listening = state == "0A" && u16::from_str_radix(p, 16).ok()? == port;
            // The address is the kernel's u32 in host order, printed in hex.
            let ip = u32::from_str_radix(ip, 16).ok()?;
            listening.then(|| std::net::Ipv4Addr::from(ip.to_le_bytes()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_long_one_is_refused_before_it_is_read() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello", &[7; MAC_BYTES]).unwrap();
        let (body, mac) = read_frame(&mut wire.as_slice(), 5).unwrap();
        assert_eq!((body.as_slice(), mac), (&b"hello"[..], [7; MAC_BYTES]));
        // A header announcing 4 GiB: refused without allocating it.
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend([0; 8]);
        let err = read_frame(&mut huge.as_slice(), 4096).unwrap_err();
        assert!(
            err.to_string().contains("more than the 4096 expected"),
            "{err}"
        );
    }

    #[test]
    fn listeners_are_found_where_they_listen() {
        let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(
            listening_on(port).unwrap(),
            [std::net::Ipv4Addr::new(127, 0, 0, 2)]
        );
        drop(listener);
        assert!(listening_on(port).unwrap().is_empty());
    }

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["0.0.0.0", "10.0.0.1", "example.org", "::"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
