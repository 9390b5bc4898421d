//! Just enough DER to reach a certificate's validity and public key and an
//! RSA key's modulus and exponent. Definite lengths and single-byte tags
//! only, which is all X.509 and PKCS#1/#8 use.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub &'static str);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

pub const INTEGER: u8 = 0x02;
pub const BIT_STRING: u8 = 0x03;
pub const OCTET_STRING: u8 = 0x04;
pub const NULL: u8 = 0x05;
pub const OID: u8 = 0x06;
pub const UTC_TIME: u8 = 0x17;
pub const GENERALIZED_TIME: u8 = 0x18;
pub const SEQUENCE: u8 = 0x30;
/// `[0] EXPLICIT` (the certificate's version).
pub const CONTEXT_0: u8 = 0xA0;

/// 1.2.840.113549.1.1.1
pub const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// One encoded value.
#[derive(Debug, Clone, Copy)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    /// Tag, length and content together.
    pub raw: &'a [u8],
}

/// Reads the values of a constructed value's content in order.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { rest: data }
    }

    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    pub fn read(&mut self) -> Result<Tlv<'a>, Error> {
        let (tlv, rest) = parse(self.rest)?;
        self.rest = rest;
        Ok(tlv)
    }

    pub fn expect(&mut self, tag: u8, what: &'static str) -> Result<Tlv<'a>, Error> {
        let tlv = self.read().map_err(|_| Error(what))?;
        if tlv.tag == tag {
            Ok(tlv)
        } else {
            Err(Error(what))
        }
    }
}

/// The first value of `input` and what follows it.
pub fn parse(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), Error> {
    let (&tag, after_tag) = input.split_first().ok_or(Error("truncated DER"))?;
    if tag & 0x1f == 0x1f {
        return Err(Error("multi-byte DER tags are not supported"));
    }
    let (&first, after_len) = after_tag.split_first().ok_or(Error("truncated DER"))?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else if first == 0x80 {
        return Err(Error("indefinite DER length"));
    } else {
        let n = usize::from(first & 0x7f);
        if n > 4 {
            return Err(Error("DER length too large"));
        }
        let bytes = after_len.get(..n).ok_or(Error("truncated DER"))?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, 2 + n)
    };
    let end = header
        .checked_add(len)
        .ok_or(Error("DER length too large"))?;
    if input.len() < end {
        return Err(Error("truncated DER"));
    }
    Ok((
        Tlv {
            tag,
            content: &input[header..end],
            raw: &input[..end],
        },
        &input[end..],
    ))
}

/// `data` as exactly one value with tag `tag`.
pub fn single<'a>(data: &'a [u8], tag: u8, what: &'static str) -> Result<Tlv<'a>, Error> {
    let (tlv, rest) = parse(data).map_err(|_| Error(what))?;
    if tlv.tag != tag || !rest.is_empty() {
        return Err(Error(what));
    }
    Ok(tlv)
}

/// What the agent needs from an X.509 certificate.
pub struct CertInfo<'a> {
    /// The whole SubjectPublicKeyInfo encoding.
    pub spki: &'a [u8],
    /// notAfter, seconds since the epoch.
    pub not_after: i64,
}

/// Certificate → TBSCertificate → validity, subjectPublicKeyInfo.
pub fn certificate(der: &[u8]) -> Result<CertInfo<'_>, Error> {
    let cert = single(der, SEQUENCE, "not a DER Certificate")?;
    let mut r = Reader::new(cert.content);
    let tbs = r.expect(SEQUENCE, "no TBSCertificate")?;
    let mut t = Reader::new(tbs.content);
    if t.peek_tag() == Some(CONTEXT_0) {
        t.read()?;
    }
    t.expect(INTEGER, "no serialNumber")?;
    t.expect(SEQUENCE, "no signature algorithm")?;
    t.expect(SEQUENCE, "no issuer")?;
    let validity = t.expect(SEQUENCE, "no validity")?;
    t.expect(SEQUENCE, "no subject")?;
    let spki = t.expect(SEQUENCE, "no subjectPublicKeyInfo")?;
    let mut v = Reader::new(validity.content);
    v.read().map_err(|_| Error("no notBefore"))?;
    let not_after = time(&v.read().map_err(|_| Error("no notAfter"))?)?;
    Ok(CertInfo {
        spki: spki.raw,
        not_after,
    })
}

/// The algorithm OID (content bytes) of a SubjectPublicKeyInfo.
pub fn spki_algorithm(spki: &[u8]) -> Result<&[u8], Error> {
    Ok(spki_parts(spki)?.0)
}

/// (algorithm OID, public key bits) of a SubjectPublicKeyInfo.
fn spki_parts(spki: &[u8]) -> Result<(&[u8], &[u8]), Error> {
    let s = single(spki, SEQUENCE, "not a SubjectPublicKeyInfo")?;
    let mut r = Reader::new(s.content);
    let alg = r.expect(SEQUENCE, "no public key algorithm")?;
    let oid = Reader::new(alg.content).expect(OID, "no public key algorithm OID")?;
    let bits = r.expect(BIT_STRING, "no public key bits")?;
    match bits.content.split_first() {
        Some((0, key)) => Ok((oid.content, key)),
        _ => Err(Error("public key bits are not whole bytes")),
    }
}

/// An RSA public key: magnitudes without leading zero bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublic<'a> {
    pub n: &'a [u8],
    pub e: &'a [u8],
}

/// The RSA key of a SubjectPublicKeyInfo; `None` for other algorithms.
pub fn rsa_public_key(spki: &[u8]) -> Result<Option<RsaPublic<'_>>, Error> {
    let (oid, key) = spki_parts(spki)?;
    if oid != RSA_ENCRYPTION {
        return Ok(None);
    }
    let seq = single(key, SEQUENCE, "not an RSAPublicKey")?;
    let mut r = Reader::new(seq.content);
    let n = unsigned(&r.expect(INTEGER, "no RSA modulus")?)?;
    let e = unsigned(&r.expect(INTEGER, "no RSA exponent")?)?;
    Ok(Some(RsaPublic { n, e }))
}

/// The public half of an RSA private key in a PEM block labelled
/// `PRIVATE KEY` (PKCS#8) or `RSA PRIVATE KEY` (PKCS#1); `None` when the
/// key is of another kind.
pub fn rsa_public_from_private<'a>(
    label: &str,
    der: &'a [u8],
) -> Result<Option<RsaPublic<'a>>, Error> {
    match label {
        "RSA PRIVATE KEY" => pkcs1_public(der).map(Some),
        "PRIVATE KEY" => {
            let seq = single(der, SEQUENCE, "not a PKCS#8 PrivateKeyInfo")?;
            let mut r = Reader::new(seq.content);
            r.expect(INTEGER, "no PKCS#8 version")?;
            let alg = r.expect(SEQUENCE, "no PKCS#8 algorithm")?;
            let oid = Reader::new(alg.content).expect(OID, "no PKCS#8 algorithm OID")?;
            if oid.content != RSA_ENCRYPTION {
                return Ok(None);
            }
            let key = r.expect(OCTET_STRING, "no PKCS#8 private key")?;
            pkcs1_public(key.content).map(Some)
        }
        _ => Ok(None),
    }
}

/// RSAPrivateKey ::= SEQUENCE { version, n, e, d, … }
fn pkcs1_public(der: &[u8]) -> Result<RsaPublic<'_>, Error> {
    let seq = single(der, SEQUENCE, "not an RSAPrivateKey")?;
    let mut r = Reader::new(seq.content);
    r.expect(INTEGER, "no RSAPrivateKey version")?;
    let n = unsigned(&r.expect(INTEGER, "no RSA modulus")?)?;
    let e = unsigned(&r.expect(INTEGER, "no RSA exponent")?)?;
    Ok(RsaPublic { n, e })
}

/// A non-negative INTEGER's magnitude.
fn unsigned<'a>(int: &Tlv<'a>) -> Result<&'a [u8], Error> {
    match int.content.first() {
        None => Err(Error("empty INTEGER")),
        Some(b) if b & 0x80 != 0 => Err(Error("negative INTEGER")),
        Some(_) => Ok(strip_leading_zeros(int.content)),
    }
}

pub fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// The canonical SubjectPublicKeyInfo of an RSA key (what openssl
/// writes): rsaEncryption with NULL parameters.
pub fn rsa_spki(key: &RsaPublic<'_>) -> Vec<u8> {
    let mut rsa = uint(key.n);
    rsa.extend(uint(key.e));
    let rsa = tlv(SEQUENCE, &rsa);
    let mut bits = vec![0u8];
    bits.extend(rsa);
    let mut alg = tlv(OID, RSA_ENCRYPTION);
    alg.extend(tlv(NULL, &[]));
    let mut spki = tlv(SEQUENCE, &alg);
    spki.extend(tlv(BIT_STRING, &bits));
    tlv(SEQUENCE, &spki)
}

/// A DER INTEGER of a non-negative magnitude.
pub fn uint(magnitude: &[u8]) -> Vec<u8> {
    let m = strip_leading_zeros(magnitude);
    let mut content = Vec::with_capacity(m.len() + 1);
    if m.first().map_or(true, |b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(m);
    tlv(INTEGER, &content)
}

pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ` as
/// seconds since the epoch.
pub fn time(t: &Tlv<'_>) -> Result<i64, Error> {
    let bad = Error("malformed certificate time");
    let s = std::str::from_utf8(t.content).map_err(|_| bad.clone())?;
    let s = s.strip_suffix('Z').ok_or(bad.clone())?;
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, Error> {
        s.get(r)
            .and_then(|x| x.parse::<i64>().ok())
            .ok_or(Error("malformed certificate time"))
    };
    let (year, rest) = match (t.tag, s.len()) {
        (UTC_TIME, 12) => {
            let yy = num(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (GENERALIZED_TIME, 14) => (num(0..4)?, 4),
        _ => return Err(bad),
    };
    let month = num(rest..rest + 2)?;
    let day = num(rest + 2..rest + 4)?;
    let hour = num(rest + 4..rest + 6)?;
    let min = num(rest + 6..rest + 8)?;
    let sec = num(rest + 8..rest + 10)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return Err(bad);
    }
    Ok(crate::utc::days_from_civil(year, month, day) * 86400 + hour * 3600 + min * 60 + sec)
}

/// Dotted text of an OID's content bytes, for error messages.
pub fn oid_text(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for &b in oid {
        if acc > u64::MAX >> 7 {
            return "?".to_string();
        }
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                // The first subidentifier packs two arcs: 40 * X + Y.
                let x = (acc / 40).min(2);
                arcs.push(x);
                arcs.push(acc - 40 * x);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use crate::wire::crypto::testing::*;
    use crate::wire::crypto::{der, pem};

    #[test]
    fn der_lengths_short_long_and_bad() {
        let (t, rest) = der::parse(&[0x04, 0x02, 0xaa, 0xbb, 0xff]).unwrap();
        assert_eq!(
            (t.tag, t.content, rest),
            (0x04, &[0xaa, 0xbb][..], &[0xff][..])
        );
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        assert_eq!(der::parse(&long).unwrap().0.content.len(), 0x80);
        assert_eq!(
            der::parse(&[0x30, 0x80, 0, 0]).unwrap_err().0,
            "indefinite DER length"
        );
        assert_eq!(der::parse(&[0x04, 0x05, 1]).unwrap_err().0, "truncated DER");
        assert_eq!(der::parse(&[0x04, 0x82, 1]).unwrap_err().0, "truncated DER");
        assert_eq!(der::parse(&[0x04]).unwrap_err().0, "truncated DER");
        assert_eq!(
            der::parse(&[0x04, 0x85, 1, 1, 1, 1, 1]).unwrap_err().0,
            "DER length too large"
        );
        assert!(der::parse(&[0x1f, 0x01, 0x00]).is_err());
    }

    #[test]
    fn der_encoding_round_trips() {
        assert_eq!(der::tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let big = der::tlv(0x04, &[0u8; 300]);
        assert_eq!(&big[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(der::uint(&[0x80]), vec![0x02, 2, 0x00, 0x80]);
        assert_eq!(der::uint(&[0x00, 0x00, 0x7f]), vec![0x02, 1, 0x7f]);
        assert_eq!(der::uint(&[]), vec![0x02, 1, 0x00]);
    }

    #[test]
    fn certificate_walk_reaches_validity_and_rsa_key() {
        let der = der_of(TENANT_CERT);
        let info = der::certificate(&der).unwrap();
        // -days 36500 from 2025: far beyond 2100.
        assert!(info.not_after > 4_102_444_800, "{}", info.not_after);
        let key = der::rsa_public_key(info.spki).unwrap().unwrap();
        assert_eq!(key.e, &[0x01, 0x00, 0x01]);
        assert_eq!(key.n.len(), 256);
        // openssl's SPKI is already canonical, so rebuilding it is the identity.
        assert_eq!(der::rsa_spki(&key), info.spki);
        // The private key gives the same public key.
        let k = pem::blocks(TENANT_KEY).unwrap().remove(0);
        assert_eq!(
            der::rsa_public_from_private(&k.label, &k.der).unwrap(),
            Some(key)
        );
    }

    #[test]
    fn pkcs1_keys_and_other_key_types() {
        // PKCS#1: the RSAPrivateKey inside the PKCS#8 wrapper.
        let k = pem::blocks(TENANT_KEY).unwrap().remove(0);
        let p8 = der::single(&k.der, der::SEQUENCE, "x").unwrap();
        let mut r = der::Reader::new(p8.content);
        r.read().unwrap();
        r.read().unwrap();
        let inner = r.expect(der::OCTET_STRING, "x").unwrap().content;
        let from_pkcs1 = der::rsa_public_from_private("RSA PRIVATE KEY", inner).unwrap();
        let from_pkcs8 = der::rsa_public_from_private("PRIVATE KEY", &k.der).unwrap();
        assert_eq!(from_pkcs1, from_pkcs8);
        assert!(from_pkcs1.is_some());

        let ec = pem::blocks(EC_KEY).unwrap().remove(0);
        assert_eq!(
            der::rsa_public_from_private(&ec.label, &ec.der).unwrap(),
            None
        );
        let der = der_of(EC_CERT);
        let info = der::certificate(&der).unwrap();
        assert_eq!(der::rsa_public_key(info.spki).unwrap(), None);
        assert_eq!(
            der::oid_text(der::spki_algorithm(info.spki).unwrap()),
            "1.2.840.10045.2.1"
        );
        assert_eq!(der::oid_text(der::RSA_ENCRYPTION), "1.2.840.113549.1.1.1");
    }

    #[test]
    fn certificate_walk_refuses_garbage_and_truncation() {
        let der = der_of(TENANT_CERT);
        for cut in [0, 1, 4, 100, der.len() - 1] {
            assert!(der::certificate(&der[..cut]).is_err(), "cut at {cut}");
        }
        assert!(der::certificate(b"not der at all").is_err());
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(der::certificate(&trailing).is_err());
    }

    #[test]
    fn certificate_times() {
        let t = |tag: u8, s: &str| {
            der::time(&der::Tlv {
                tag,
                content: s.as_bytes(),
                raw: &[],
            })
        };
        assert_eq!(t(der::UTC_TIME, "700101000000Z"), Ok(0));
        assert_eq!(t(der::UTC_TIME, "491231235959Z"), Ok(2_524_607_999));
        assert_eq!(t(der::UTC_TIME, "500101000000Z"), Ok(-631_152_000));
        assert_eq!(t(der::GENERALIZED_TIME, "20000301000000Z"), Ok(951_868_800));
        assert_eq!(
            t(der::GENERALIZED_TIME, "21251103091500Z"),
            Ok(4_917_834_900)
        );
        assert!(t(der::UTC_TIME, "20000301000000Z").is_err());
        assert!(t(der::UTC_TIME, "701301000000Z").is_err());
        assert!(t(der::UTC_TIME, "7001010000+0Z").is_err());
        assert!(t(der::UTC_TIME, "700101000000").is_err());
    }
}
