//! crypt(3) password hashes in pure Rust: MD5-crypt (`$1$`) and SHA-crypt
//! (`$5$` SHA-256, `$6$` SHA-512).
//!
//! waagent calls Python's `crypt.crypt`, which Python 3.13 removed and which
//! needs libcrypt; the hash is all `usermod -p`/`chpasswd -e` want, so we
//! compute it ourselves and the agent needs no C library beyond libc.
//!
//! The algorithms follow their references exactly, so that what we write to
//! `/etc/shadow` is what glibc's crypt(3) would have written:
//!
//! * SHA-crypt: Ulrich Drepper, "Unix crypt using SHA-256 and SHA-512"
//!   (<https://www.akkadia.org/drepper/SHA-crypt.txt>), including the
//!   optional `rounds=N$` (clamped to 1000..=999999999, printed when given)
//!   and the 16-byte salt limit;
//! * MD5-crypt: Poul-Henning Kamp's FreeBSD `crypt-md5.c` (8-byte salt limit,
//!   1000 fixed rounds), as glibc's `md5-crypt.c` implements it.
//!
//! A salt ends at its first `$`, as in crypt(3). The password is never
//! logged, and nothing here keeps a copy of it.

use std::io::Read;

use md5::Md5;
use sha2::{Digest, Sha256, Sha512};

use crate::config::CryptId;

/// The 64 characters crypt(3) encodes hashes with, in crypt's order
/// (value 0 is `.`, not base64's `A`).
const CRYPT_B64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Salt characters for [`random_salt`]: waagent's `string.ascii_letters +
/// string.digits`. crypt(3) would also take `.` and `/`, but keeping
/// waagent's alphabet makes our hashes look like its hashes and keeps salts
/// free of characters any tool treats as path or field separators; 62
/// symbols still give 5.95 bits per character.
const SALT_ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// SHA-crypt limits and default (Drepper's specification).
const SHA_SALT_MAX: usize = 16;
const ROUNDS_DEFAULT: u64 = 5000;
const ROUNDS_MIN: u64 = 1000;
const ROUNDS_MAX: u64 = 999_999_999;
const ROUNDS_PREFIX: &str = "rounds=";

/// MD5-crypt's salt limit.
const MD5_SALT_MAX: usize = 8;

/// `crypt(password, "$" + id + "$" + salt)`: the hash exactly as glibc's
/// crypt(3) computes it. `salt` may be longer than the scheme allows (it is
/// cut at 16 bytes for SHA-crypt, 8 for MD5-crypt, or at a `$`), and for
/// SHA-crypt may start with `rounds=N$`.
pub fn hash(password: &str, id: CryptId, salt: &str) -> String {
    let password = password.as_bytes();
    match id {
        CryptId::Md5 => md5_crypt(password, salt),
        CryptId::Sha256 => sha_crypt::<Sha256>(password, "$5$", salt, &SHA256_ORDER),
        CryptId::Sha512 => sha_crypt::<Sha512>(password, "$6$", salt, &SHA512_ORDER),
    }
}

/// Whether `password` matches `hash` (`$1$salt$…`, `$5$[rounds=N$]salt$…`
/// or `$6$[rounds=N$]salt$…`): recomputes the hash with the salt and rounds
/// the stored one names and compares the two in constant time. Anything
/// else (other schemes, `!` locked entries, `*`) never matches.
pub fn verify(password: &str, hash: &str) -> bool {
    let (id, setting) = if let Some(rest) = hash.strip_prefix("$1$") {
        (CryptId::Md5, rest)
    } else if let Some(rest) = hash.strip_prefix("$5$") {
        (CryptId::Sha256, rest)
    } else if let Some(rest) = hash.strip_prefix("$6$") {
        (CryptId::Sha512, rest)
    } else {
        return false;
    };
    // The salt (and rounds) are everything up to the last `$`; the
    // recomputation cuts the salt exactly as crypt(3) does.
    let Some((salt, _)) = setting.rsplit_once('$') else {
        return false;
    };
    constant_time_eq(self::hash(password, id, salt).as_bytes(), hash.as_bytes())
}

/// `len` random characters from `[A-Za-z0-9]` (see `SALT_ALPHABET` for
/// why not crypt's full `[./0-9A-Za-z]`), `len` clamped to 1..=16, the most
/// SHA-crypt uses (waagent's `Provisioning.PasswordCryptSaltLength` default
/// is 10).
///
/// Bytes come from `/dev/urandom`; a byte is used only when it is below
/// 248 (= 4 × 62), so every character is equally likely (plain `% 62` would
/// favour the first eight). Should `/dev/urandom` be unreadable the salt is
/// derived from the clock and process id instead: a salt must be unique,
/// not secret, so that is a warning, not a failure.
pub fn random_salt(len: usize) -> String {
    let len = len.clamp(1, SHA_SALT_MAX);
    let mut out = String::with_capacity(len);
    let mut source = RandomBytes::new();
    while out.len() < len {
        let byte = source.next_byte();
        let limit = (256 / SALT_ALPHABET.len() * SALT_ALPHABET.len()) as u8;
        if byte < limit {
            out.push(char::from(
                SALT_ALPHABET[usize::from(byte) % SALT_ALPHABET.len()],
            ));
        }
    }
    out
}

/// Random bytes from `/dev/urandom`, falling back to a hash chain seeded
/// from the clock and the process id.
struct RandomBytes {
    urandom: Option<std::fs::File>,
    buf: [u8; 32],
    pos: usize,
    fallback: Option<[u8; 32]>,
}

impl RandomBytes {
    fn new() -> Self {
        let urandom = match std::fs::File::open("/dev/urandom") {
            Ok(f) => Some(f),
            Err(e) => {
                log::warn!(
                    "cannot open /dev/urandom ({e}); deriving the password salt from the clock"
                );
                None
            }
        };
        RandomBytes {
            urandom,
            buf: [0; 32],
            pos: 32,
            fallback: None,
        }
    }

    fn next_byte(&mut self) -> u8 {
        if self.pos == self.buf.len() {
            self.refill();
        }
        let byte = self.buf[self.pos];
        self.pos += 1;
        byte
    }

    fn refill(&mut self) {
        self.pos = 0;
        if let Some(f) = self.urandom.as_mut() {
            match f.read_exact(&mut self.buf) {
                Ok(()) => return,
                Err(e) => {
                    log::warn!(
                        "cannot read /dev/urandom ({e}); deriving the password salt from the clock"
                    );
                    self.urandom = None;
                }
            }
        }
        let mut h = Sha256::new();
        match self.fallback {
            Some(previous) => h.update(previous),
            None => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default();
                h.update(now.to_le_bytes());
                h.update(std::process::id().to_le_bytes());
                h.update((&self.buf as *const _ as usize).to_le_bytes());
            }
        }
        let next: [u8; 32] = h.finalize().into();
        self.fallback = Some(next);
        self.buf = next;
    }
}

/// Equal lengths and equal bytes, taking the same time whichever byte
/// differs (lengths of crypt hashes are public).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `salt` cut at its first `$` and to at most `max` bytes, as crypt(3)
/// does (`strcspn(salt, "$")`, then the limit).
fn cut_salt(salt: &str, max: usize) -> &[u8] {
    let bytes = salt.as_bytes();
    let end = bytes.iter().position(|&b| b == b'$').unwrap_or(bytes.len());
    &bytes[..end.min(max)]
}

/// Appends the `n` low 6-bit groups of `w`, least significant first
/// (crypt's `b64_from_24bit`).
fn push_b64(out: &mut Vec<u8>, w: u32, n: usize) {
    let mut w = w;
    for _ in 0..n {
        out.push(CRYPT_B64[(w & 0x3f) as usize]);
        w >>= 6;
    }
}

fn to_string(bytes: Vec<u8>) -> String {
    // Salts come from the caller as &str; only a salt cut inside a
    // multi-byte character can make this lossy, and crypt(3) would emit
    // those raw bytes, which no shadow file could hold as text anyway.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

// ---------------------------------------------------------------- MD5-crypt

fn md5_crypt(password: &[u8], salt: &str) -> String {
    const MAGIC: &[u8] = b"$1$";
    let salt = cut_salt(salt, MD5_SALT_MAX);

    let alternate = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize();

    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(MAGIC);
    ctx.update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alternate[..n]);
        left -= n;
    }
    // PHK's famous oddity: for each bit of the length, a NUL byte or the
    // first password byte.
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut digest = ctx.finalize();

    for i in 0..1000 {
        let mut ctx = Md5::new();
        if i & 1 == 1 {
            ctx.update(password);
        } else {
            ctx.update(digest);
        }
        if i % 3 != 0 {
            ctx.update(salt);
        }
        if i % 7 != 0 {
            ctx.update(password);
        }
        if i & 1 == 1 {
            ctx.update(digest);
        } else {
            ctx.update(password);
        }
        digest = ctx.finalize();
    }

    let d = digest;
    let mut out = Vec::with_capacity(3 + salt.len() + 1 + 22);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(salt);
    out.push(b'$');
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        let w = (u32::from(d[a]) << 16) | (u32::from(d[b]) << 8) | u32::from(d[c]);
        push_b64(&mut out, w, 4);
    }
    push_b64(&mut out, u32::from(d[11]), 2);
    to_string(out)
}

// ---------------------------------------------------------------- SHA-crypt

/// The byte triples SHA-256-crypt encodes, in order; the last two bytes go
/// out as three characters.
const SHA256_ORDER: ShaOrder = ShaOrder {
    triples: &[
        (0, 10, 20),
        (21, 1, 11),
        (12, 22, 2),
        (3, 13, 23),
        (24, 4, 14),
        (15, 25, 5),
        (6, 16, 26),
        (27, 7, 17),
        (18, 28, 8),
        (9, 19, 29),
    ],
    tail: Tail::Two(31, 30),
};

/// The byte triples SHA-512-crypt encodes; the last byte goes out as two
/// characters.
const SHA512_ORDER: ShaOrder = ShaOrder {
    triples: &[
        (0, 21, 42),
        (22, 43, 1),
        (44, 2, 23),
        (3, 24, 45),
        (25, 46, 4),
        (47, 5, 26),
        (6, 27, 48),
        (28, 49, 7),
        (50, 8, 29),
        (9, 30, 51),
        (31, 52, 10),
        (53, 11, 32),
        (12, 33, 54),
        (34, 55, 13),
        (56, 14, 35),
        (15, 36, 57),
        (37, 58, 16),
        (59, 17, 38),
        (18, 39, 60),
        (40, 61, 19),
        (62, 20, 41),
    ],
    tail: Tail::One(63),
};

struct ShaOrder {
    triples: &'static [(usize, usize, usize)],
    tail: Tail,
}

enum Tail {
    /// `b64_from_24bit(0, d[a], d[b], 3)`.
    Two(usize, usize),
    /// `b64_from_24bit(0, 0, d[a], 2)`.
    One(usize),
}

/// `rounds=N$` at the start of `salt`: the clamped count and the rest.
/// Like glibc, a `rounds=` not followed by digits and `$` is no rounds
/// field at all but part of the salt. (We take plain digits only, where
/// glibc's strtoul would also skip spaces and signs.)
fn split_rounds(salt: &str) -> (Option<u64>, &str) {
    let Some(rest) = salt.strip_prefix(ROUNDS_PREFIX) else {
        return (None, salt);
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let Some(after) = rest[digits..].strip_prefix('$') else {
        return (None, salt);
    };
    // Saturating, as strtoul saturates at ULONG_MAX; then clamped.
    let n = rest[..digits].bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    });
    (Some(n.clamp(ROUNDS_MIN, ROUNDS_MAX)), after)
}

/// Drepper's algorithm, steps numbered as in the specification.
fn sha_crypt<D: Digest + Clone>(
    password: &[u8],
    magic: &str,
    salt: &str,
    order: &ShaOrder,
) -> String {
    let (custom_rounds, salt) = split_rounds(salt);
    let rounds = custom_rounds.unwrap_or(ROUNDS_DEFAULT);
    let salt = cut_salt(salt, SHA_SALT_MAX);
    let size = <D as Digest>::output_size();

    // Steps 4-8: digest B = H(password salt password).
    let b = D::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize();

    // Steps 1-3, 9-12: digest A.
    let mut ctx = D::new();
    ctx.update(password);
    ctx.update(salt);
    let mut left = password.len();
    while left > size {
        ctx.update(&b);
        left -= size;
    }
    ctx.update(&b[..left]);
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            ctx.update(&b);
        } else {
            ctx.update(password);
        }
        bits >>= 1;
    }
    let a = ctx.finalize();

    // Steps 13-16: byte sequence P from digest DP = H(password × len).
    let mut ctx = D::new();
    for _ in 0..password.len() {
        ctx.update(password);
    }
    let dp = ctx.finalize();
    let p = repeat_to(&dp, password.len());

    // Steps 17-20: byte sequence S from digest DS = H(salt × (16 + A[0])).
    let mut ctx = D::new();
    for _ in 0..16 + usize::from(a[0]) {
        ctx.update(salt);
    }
    let ds = ctx.finalize();
    let s = repeat_to(&ds, salt.len());

    // Step 21: the rounds.
    let mut c = a;
    for i in 0..rounds {
        let mut ctx = D::new();
        if i & 1 == 1 {
            ctx.update(&p);
        } else {
            ctx.update(&c);
        }
        if i % 3 != 0 {
            ctx.update(&s);
        }
        if i % 7 != 0 {
            ctx.update(&p);
        }
        if i & 1 == 1 {
            ctx.update(&c);
        } else {
            ctx.update(&p);
        }
        c = ctx.finalize();
    }

    // Step 22: the output string.
    let mut out = Vec::with_capacity(magic.len() + 20 + salt.len() + 1 + 86);
    out.extend_from_slice(magic.as_bytes());
    if let Some(n) = custom_rounds {
        out.extend_from_slice(format!("{ROUNDS_PREFIX}{n}$").as_bytes());
    }
    out.extend_from_slice(salt);
    out.push(b'$');
    for &(x, y, z) in order.triples {
        let w = (u32::from(c[x]) << 16) | (u32::from(c[y]) << 8) | u32::from(c[z]);
        push_b64(&mut out, w, 4);
    }
    match order.tail {
        Tail::Two(x, y) => push_b64(&mut out, (u32::from(c[x]) << 8) | u32::from(c[y]), 3),
        Tail::One(x) => push_b64(&mut out, u32::from(c[x]), 2),
    }
    to_string(out)
}

/// `digest` repeated (and cut) to `len` bytes: the specification's P and S.
fn repeat_to(digest: &[u8], len: usize) -> Vec<u8> {
    digest.iter().copied().cycle().take(len).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Drepper's `tests2[]`: (setting, password, expected).
    const SHA_VECTORS: &[(&str, &str, &str)] = &[
        ("$5$saltstring", "Hello world!", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
        ("$5$rounds=10000$saltstringsaltstring", "Hello world!",
         "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"),
        ("$5$rounds=5000$toolongsaltstring", "This is just a test",
         "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5"),
        ("$5$rounds=1400$anotherlongsaltstring",
         "a very much longer text to encrypt.  This one even stretches over morethan one line.",
         "$5$rounds=1400$anotherlongsalts$Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP84Bnq1"),
        ("$5$rounds=77777$short", "we have a short salt string but not a short password",
         "$5$rounds=77777$short$JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/"),
        ("$5$rounds=123456$asaltof16chars..", "a short string",
         "$5$rounds=123456$asaltof16chars..$gP3VQ/6X7UUEW3HkBn2w1/Ptq2jxPyzV/cZKmF/wJvD"),
        ("$5$rounds=10$roundstoolow", "the minimum number is still observed",
         "$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC"),
        ("$6$saltstring", "Hello world!",
         "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"),
        ("$6$rounds=10000$saltstringsaltstring", "Hello world!",
         "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."),
        ("$6$rounds=5000$toolongsaltstring", "This is just a test",
         "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0"),
        ("$6$rounds=1400$anotherlongsaltstring",
         "a very much longer text to encrypt.  This one even stretches over morethan one line.",
         "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1"),
        ("$6$rounds=77777$short", "we have a short salt string but not a short password",
         "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0"),
        ("$6$rounds=123456$asaltof16chars..", "a short string",
         "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1"),
        ("$6$rounds=10$roundstoolow", "the minimum number is still observed",
         "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX."),
    ];

    /// Passwords for the cross-checks: empty, ASCII, unicode, long, with `$`
    /// and other characters shells and crypt care about.
    const PASSWORDS: &[&str] = &[
        "",
        "Hello world!",
        "p\u{e4}ssw\u{f6}rd \u{2713} \u{1f511}",
        "with$dollar$signs$",
        "-starts-with-a-dash 'quotes' \"double\" \\back\\ `tick` ;|&",
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "x",
        "sixteen-chars-pw",
    ];

    const SALTS: &[&str] = &[
        "",
        "a",
        "saltstring",
        "AbCdEfGh12",
        "0123456789abcdef",
        "./z",
    ];

    const IDS: &[(CryptId, &str)] = &[
        (CryptId::Md5, "1"),
        (CryptId::Sha256, "5"),
        (CryptId::Sha512, "6"),
    ];

    fn id_of(setting: &str) -> (CryptId, &str) {
        match &setting[..3] {
            "$1$" => (CryptId::Md5, &setting[3..]),
            "$5$" => (CryptId::Sha256, &setting[3..]),
            _ => (CryptId::Sha512, &setting[3..]),
        }
    }

    #[test]
    fn drepper_specification_vectors_sha256() {
        drepper_vectors("$5$");
    }

    #[test]
    fn drepper_specification_vectors_sha512() {
        drepper_vectors("$6$");
    }

    fn drepper_vectors(prefix: &str) {
        for (setting, password, expected) in SHA_VECTORS.iter().filter(|v| v.0.starts_with(prefix))
        {
            let (id, salt) = id_of(setting);
            assert_eq!(&hash(password, id, salt), expected, "{setting}");
            assert!(verify(password, expected), "{expected}");
            assert!(!verify("wrong", expected));
        }
    }

    #[test]
    fn md5_crypt_known_values() {
        // The empty password with an empty salt: the constant in FreeBSD's
        // and glibc's test suites.
        assert_eq!(hash("", CryptId::Md5, ""), "$1$$qRPK7m23GJusamGpoGLby/");
        // Checked with `openssl passwd -1` (OpenSSL 3.0).
        assert_eq!(
            hash("x", CryptId::Md5, "abcdefghijk"),
            "$1$abcdefgh$znAnv9M.XU2pRYfmSs46h/"
        );
        assert_eq!(
            hash("a", CryptId::Md5, "ab"),
            "$1$ab$NM4FR4Dl/CzoTSJTd3YJ3."
        );
    }

    #[test]
    fn salt_is_cut_at_dollar_and_to_the_scheme_limit() {
        assert_eq!(
            hash("x", CryptId::Sha512, "abcdefghijklmnopqrstuv"),
            "$6$abcdefghijklmnop$4MjOne1jVRKP4IuHRPFedC4vlQHNjvcBfQJVlfB8ciQ5YUzW2g81Pyw4sptw4femJ071/eApI0WDsBAOOCmTl0"
        );
        assert_eq!(
            hash("x", CryptId::Sha512, "abc$def"),
            hash("x", CryptId::Sha512, "abc")
        );
        assert_eq!(
            hash("x", CryptId::Md5, "ab$cd"),
            hash("x", CryptId::Md5, "ab")
        );
        // Checked with `openssl passwd -6 -salt 'rounds=7000$abc'`.
        assert_eq!(
            hash("x", CryptId::Sha512, "rounds=7000$abc"),
            "$6$rounds=7000$abc$vRGgqOTMs/A7j.CACmaf.jMjY2KxN.qDKHPCKMK8Gved6givNjCHlm4zGmPNEsSKMxD6wQtvlOioYFVg9p5BN/"
        );
    }

    #[test]
    fn rounds_field_forms() {
        assert_eq!(split_rounds("rounds=5000$s"), (Some(5000), "s"));
        assert_eq!(split_rounds("rounds=10$s"), (Some(1000), "s"));
        assert_eq!(split_rounds("rounds=$s"), (Some(1000), "s"));
        assert_eq!(
            split_rounds("rounds=99999999999999999999999$s"),
            (Some(999_999_999), "s")
        );
        assert_eq!(split_rounds("rounds=12x$s"), (None, "rounds=12x$s"));
        assert_eq!(split_rounds("rounds=12"), (None, "rounds=12"));
        assert_eq!(split_rounds("salt"), (None, "salt"));
        // A rounds= that is no rounds field is salt, cut to 16.
        assert!(hash("x", CryptId::Sha256, "rounds=12x$s").starts_with("$5$rounds=12x$"));
        // MD5-crypt has no rounds field.
        assert!(hash("x", CryptId::Md5, "rounds=1000$s").starts_with("$1$rounds=1$"));
    }

    #[test]
    fn verify_refuses_what_is_not_a_matching_hash() {
        let h = hash("secret", CryptId::Sha512, "AbCdEfGh12");
        assert!(verify("secret", &h));
        assert!(!verify("secreT", &h));
        assert!(!verify("secret", &h[..h.len() - 1]));
        assert!(!verify("secret", &format!("{h}x")));
        for bad in [
            "",
            "!",
            "*",
            "!!",
            "$6$",
            "$6$salt",
            "$2b$10$abc",
            "secret",
            "$x$a$b",
        ] {
            assert!(!verify("secret", bad), "{bad}");
        }
        assert!(verify("", &hash("", CryptId::Md5, "s")));
    }

    #[test]
    fn random_salt_uses_the_alphabet_and_clamps_the_length() {
        for (asked, got) in [(0, 1), (1, 1), (10, 10), (16, 16), (17, 16), (1000, 16)] {
            let salt = random_salt(asked);
            assert_eq!(salt.len(), got, "{asked}");
            assert!(salt.bytes().all(|b| SALT_ALPHABET.contains(&b)), "{salt}");
        }
        assert_ne!(random_salt(16), random_salt(16));
    }

    #[test]
    fn random_salt_is_roughly_uniform() {
        // 62 symbols, 62 000 draws: each count should be near 1000; a
        // modulo bias would put the first eight near 1250.
        let mut counts = [0usize; 62];
        for _ in 0..62_000 / 16 + 1 {
            for b in random_salt(16).bytes() {
                if let Some(i) = SALT_ALPHABET.iter().position(|&c| c == b) {
                    counts[i] += 1;
                }
            }
        }
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(
            min.is_some_and(|&m| m > 800) && max.is_some_and(|&m| m < 1200),
            "{counts:?}"
        );
    }

    #[test]
    fn fallback_bytes_still_vary() {
        let mut r = RandomBytes {
            urandom: None,
            buf: [0; 32],
            pos: 32,
            fallback: None,
        };
        let first: Vec<u8> = (0..32).map(|_| r.next_byte()).collect();
        let second: Vec<u8> = (0..32).map(|_| r.next_byte()).collect();
        assert_ne!(first, second);
    }

    /// `openssl passwd -{id} -salt {salt}`, the password on standard input
    /// (so one starting with `-` is not an option), or as an argument when
    /// empty (openssl reads no line then). `None` when openssl is missing.
    fn openssl(id: &str, salt: &str, password: &str) -> Option<String> {
        let mut cmd = Command::new("openssl");
        cmd.args(["passwd", &format!("-{id}"), "-salt", salt]);
        if password.is_empty() {
            cmd.arg("");
        } else {
            cmd.arg("-stdin");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(password.as_bytes()).ok()?;
        }
        let out = child.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
        // OpenSSL 3.0's SHA-crypt prints `<NULL>` for an empty password (its
        // bug); python's crypt covers that case instead.
        (out.status.success() && text != "<NULL>").then_some(text)
    }

    /// Python's `crypt.crypt` (libcrypt) for each (password, setting), in
    /// one interpreter (`x` + hex on stdin, so any byte and the empty
    /// password survive); `None` when
    /// python3 or its crypt module is unavailable. A setting libcrypt
    /// refuses gives an empty string.
    fn python_crypt(pairs: &[(&str, String)]) -> Option<Vec<String>> {
        const SCRIPT: &str = "import crypt, sys\n\
            for line in sys.stdin:\n\
            \x20   pw, setting = (bytes.fromhex(f[1:]).decode() for f in line.split())\n\
            \x20   print(crypt.crypt(pw, setting) or '')\n";
        let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        let input: String = pairs
            .iter()
            .map(|(pw, setting)| format!("x{} x{}\n", hex(pw), hex(setting)))
            .collect();
        let mut child = Command::new("python3")
            .args(["-W", "ignore", "-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).ok()?;
        }
        let out = child.wait_with_output().ok()?;
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        (out.status.success() && lines.len() == pairs.len()).then_some(lines)
    }

    #[test]
    fn matches_openssl_passwd() {
        if openssl("6", "probe", "probe").is_none() {
            eprintln!("skipped: openssl passwd -6 is not available");
            return;
        }
        let mut checked = 0;
        for (id, flag) in IDS {
            for password in PASSWORDS {
                // openssl refuses an empty salt; crypt(3) takes it.
                for salt in SALTS.iter().filter(|s| !s.is_empty()) {
                    let ours = hash(password, *id, salt);
                    let Some(theirs) = openssl(flag, salt, password) else {
                        assert!(password.is_empty() && *id != CryptId::Md5);
                        continue;
                    };
                    assert_eq!(ours, theirs, "-{flag} {salt:?} {password:?}");
                    checked += 1;
                }
            }
        }
        eprintln!("{checked} hashes agree with openssl passwd");
    }

    #[test]
    fn matches_python_crypt() {
        let mut cases: Vec<(&str, String)> = Vec::new();
        for (_, flag) in IDS {
            for password in PASSWORDS {
                for salt in SALTS {
                    cases.push((password, format!("${flag}${salt}")));
                }
            }
        }
        for setting in [
            "$5$rounds=1000$abc",
            "$6$rounds=5000$abc",
            "$6$rounds=7777$0123456789abcdefXYZ",
        ] {
            cases.push(("Hello world!", setting.to_string()));
        }
        let Some(theirs) = python_crypt(&cases) else {
            eprintln!("skipped: python3 with the crypt module is not available");
            return;
        };
        for ((password, setting), theirs) in cases.iter().zip(&theirs) {
            let (id, salt) = id_of(setting);
            assert_eq!(&hash(password, id, salt), theirs, "{setting} {password:?}");
        }
        eprintln!("{} hashes agree with python3 crypt", cases.len());
    }

    #[test]
    fn our_hashes_verify_elsewhere_and_theirs_verify_here() {
        let mut ours: Vec<(&str, String)> = Vec::new();
        let mut checked = 0;
        for (id, flag) in IDS {
            for password in PASSWORDS {
                ours.push((password, hash(password, *id, &random_salt(10))));
                if let Some(theirs) = openssl(flag, &random_salt(8), password) {
                    assert!(verify(password, &theirs), "{theirs} for {password:?}");
                    assert!(!verify(&format!("{password}!"), &theirs));
                    checked += 1;
                }
            }
        }
        // crypt(password, hash) == hash is how libcrypt verifies.
        if let Some(recomputed) = python_crypt(&ours) {
            for ((password, hash), again) in ours.iter().zip(&recomputed) {
                assert_eq!(hash, again, "{password:?}");
                checked += 1;
            }
        }
        if checked == 0 {
            eprintln!("skipped: neither openssl nor python3 crypt is available");
        }
    }
}
