//! A minimal TLS 1.3 ClientHello carrying an SNI, so a device can claim a
//! name (e.g. the manager's) on a connection to some other address without a
//! TLS stack. Enough for a gateway to parse SNI; never completes a handshake.

/// A ClientHello record for `sni` (TLS 1.3 via supported_versions, one
/// X25519 key share of random bytes).
pub fn client_hello(sni: &str) -> Vec<u8> {
    let random = crate::device::random_bytes(32 + 32 + 32);
    let (client_random, session_id, key) = (&random[..32], &random[32..64], &random[64..]);

    let mut exts = Vec::new();
    // server_name: list of one host_name.
    let name = sni.as_bytes();
    let mut sn = Vec::new();
    push_u16(&mut sn, name.len() as u16 + 3);
    sn.push(0); // host_name
    push_u16(&mut sn, name.len() as u16);
    sn.extend_from_slice(name);
    push_ext(&mut exts, 0x0000, &sn);
    // supported_groups: x25519.
    push_ext(&mut exts, 0x000a, &[0, 2, 0, 0x1d]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, ed25519.
    push_ext(
        &mut exts,
        0x000d,
        &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x08, 0x07],
    );
    // supported_versions: TLS 1.3.
    push_ext(&mut exts, 0x002b, &[2, 0x03, 0x04]);
    // key_share: x25519 with 32 bytes.
    let mut ks = Vec::new();
    push_u16(&mut ks, 2 + 2 + 32);
    push_u16(&mut ks, 0x001d);
    push_u16(&mut ks, 32);
    ks.extend_from_slice(key);
    push_ext(&mut exts, 0x0033, &ks);

    let mut body = vec![0x03, 0x03]; // legacy_version TLS 1.2
    body.extend_from_slice(client_random);
    body.push(32);
    body.extend_from_slice(session_id);
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[1, 0]); // compression: null
    push_u16(&mut body, exts.len() as u16);
    body.extend_from_slice(&exts);

    let mut hs = vec![0x01]; // client_hello
    let len = body.len() as u32;
    hs.extend_from_slice(&len.to_be_bytes()[1..]);
    hs.extend_from_slice(&body);

    let mut record = vec![0x16, 0x03, 0x01]; // handshake, legacy record version
    push_u16(&mut record, hs.len() as u16);
    record.extend_from_slice(&hs);
    record
}

fn push_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_be_bytes());
}

fn push_ext(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    push_u16(buf, ty);
    push_u16(buf, data.len() as u16);
    buf.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_consistent() {
        let r = client_hello("wfm.site.example");
        let record_len = u16::from_be_bytes([r[3], r[4]]) as usize;
        assert_eq!(record_len, r.len() - 5);
        let hs_len = u32::from_be_bytes([0, r[6], r[7], r[8]]) as usize;
        assert_eq!(hs_len, r.len() - 9);
        assert!(r.windows(16).any(|w| w == b"wfm.site.example"));
    }
}
